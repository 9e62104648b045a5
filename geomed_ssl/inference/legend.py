"""What a class map's values mean, for the maps ``predict`` writes: the stored label value of each class (and the
nodata value), their colours, and their names (the ``GEOMED_SSL_CLASSES`` tag, and GDAL's sidecar with category
names, which QGIS shows in the legend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from geomed_ssl.errors import ConfigError
from geomed_ssl.labels.read import MAX_CLASS_VALUE
from geomed_ssl.outcommands import sidecar_path


def class_lookup(num_classes: int, class_values: Sequence[int] | None = None,
                 tagged: bool = False) -> tuple[np.ndarray, int]:
    """Class index -> stored label value (``class_values``, default the index itself), and the nodata label.

    uint8 with nodata 255 when every value fits below 255, else uint16 with nodata 65535; with ``tagged`` (a
    GeoTIFF, whose nodata tag says which value it is) uint8 whenever the values fit in 0..255 and leave one free,
    the largest free one the nodata: a 0 / 255 cloud mask's map stays uint8, where a uint16 map carries a 65,536-entry
    colour table (400 KB a file).
    """
    values = list(range(num_classes)) if class_values is None else [int(v) for v in class_values]
    if len(values) != num_classes or len(set(values)) != num_classes:
        raise ConfigError(f"class_values must give {num_classes} distinct label values (one per class), got "
                          f"{list(class_values or [])}.")
    if min(values) < 0 or max(values) > MAX_CLASS_VALUE:
        raise ConfigError(f"class values must lie in [0, 65534] to fit a uint16 class map; got {min(values)}.."
                          f"{max(values)}.")
    free = [v for v in range(255, -1, -1) if v not in set(values)] if tagged and max(values) <= 255 else []
    if max(values) < 255 or free:
        return np.asarray(values, dtype=np.uint8), 255 if max(values) < 255 else free[0]
    return np.asarray(values, dtype=np.uint16), 65535


# A qualitative palette for class maps whose labels carried no colours (matplotlib's tab20, reordered: strong first).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]


def class_record(values: Sequence[int], names: Sequence[str] | None) -> str | None:
    """What a class map's metadata says its values mean (``GEOMED_SSL_CLASSES``): JSON of label value -> class
    name, in the classes' order (that of the probability bands); None without names."""
    if not names:
        return None
    return json.dumps({str(int(v)): str(n) for v, n in zip(values, names)}, ensure_ascii=False)


CATEGORY_VALUES = 4096  # class values a sidecar names (one entry per value from 0: uint16 values would take 1.8 MB)


def category_list(values: Sequence[int], names: Sequence[str] | None) -> list[str] | None:
    """A class map's GDAL category names: one per pixel value from 0, a class's name at its value and blanks for
    values no class takes (nodata among them); None without names, or with a class value of ``CATEGORY_VALUES`` or
    more."""
    if not names or max(int(v) for v in values) >= CATEGORY_VALUES:
        return None
    by_value = {int(v): str(n) for v, n in zip(values, names)}
    return [by_value.get(v, "") for v in range(max(by_value) + 1)]


def category_names(values: Sequence[int], names: Sequence[str] | None) -> str | None:
    """GDAL's sidecar of a class map (``<map>.aux.xml``, a PAM dataset) naming its values (:func:`category_list`
    as ``CategoryNames``), which QGIS shows as the legend's labels (GDAL keeps no category names inside a GeoTIFF);
    None where there is no list."""
    categories = category_list(values, names)
    if categories is None:
        return None
    from xml.sax.saxutils import escape

    entries = "".join(f"      <Category>{escape(c)}</Category>\n" for c in categories)
    return (f'<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n{entries}    </CategoryNames>\n'
            "  </PAMRasterBand>\n</PAMDataset>\n")


def sidecar_categories(path: Path) -> list[str] | None:
    """The category names GDAL's sidecar of the raster at ``path`` holds (a viewer may have added statistics), or
    None (no sidecar, unreadable, none named)."""
    import xml.etree.ElementTree as ET

    try:
        found = ET.parse(sidecar_path(path)).getroot().find("PAMRasterBand/CategoryNames")
    except (OSError, ET.ParseError):
        return None
    return None if found is None else [c.text or "" for c in found.iter("Category")]


def class_colormap(values: Sequence[int], colors: Sequence[Sequence[int] | None] | None,
                   nodata: int) -> dict[int, tuple[int, ...]]:
    """A GDAL colour table for a class map: each class value's colour (the training labels' own, else
    ``PALETTE``'s), nodata transparent."""
    colors = list(colors or [None] * len(values))
    table = {int(v): tuple(int(x) for x in (c or PALETTE[i % len(PALETTE)]))[:3] + (255,)
             for i, (v, c) in enumerate(zip(values, colors))}
    return {**table, int(nodata): (0, 0, 0, 0)}
