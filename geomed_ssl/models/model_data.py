"""New data meets a trained model: the one band rule and the one range check every command applies.

``catalog_for_encoder`` picks and orders the catalog's bands by name for an encoder (``plain`` / ``grouped``:
exactly the encoder's bands, reordered, extras dropped, missing ones refused; ``spectral`` / ``wavelength``: every
data band the encoder knows by name or centre wavelength, in the order of the encoder bands they match, the others
dropped with a note).
``check_value_ranges`` warns when the data's values are far from the statistics the model normalises with, and
``warn_other_scale`` when its pixels or voxels are far from the size the model was trained at (``training_scale``).
``encoder_naming`` is how an export's recipe named the bands of files without descriptions (``data.band_names``) and
stacked single-channel files (``data.channels``), which a recipe that sets neither takes
(``finetune.fit.with_encoder_naming``).
"""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from geomed_ssl.bands.matching import brief
from geomed_ssl.bands.conform import conform_catalog, conform_record
from geomed_ssl.bands.ranges import warn_far_from_stats, warn_other_scaling
from geomed_ssl.data.records import reoriented_axes
from geomed_ssl.data.stats import BandStats
from geomed_ssl.geo.pixel_size import pixel_size
from geomed_ssl.errors import DataError
from geomed_ssl.models.encoder import BAND_FLEXIBLE, EncoderConfig
from geomed_ssl.models.spectral import match_bands

log = logging.getLogger("geomed_ssl")

# how files without band descriptions are named and single-channel files stacked into a model's bands (not
# data.wavelengths: a recipe's overrides files' own, which another sensor's cube must keep)
NAMING_KEYS = ("band_names", "channels")
# how its files were read besides: their sensor (names and wavelengths of bands read by position) and nodata value
READING_KEYS = ("sensor", "nodata")


def export_data(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` section an export's config.json recorded: a pretrained encoder's ``recipe.data``, a fine-tuned
    model's own ``data`` (empty when it has none)."""
    data = (meta.get("recipe") or {}).get("data") or meta.get("data")
    return data if isinstance(data, dict) else {}


def encoder_naming(meta: dict[str, Any]) -> dict[str, Any]:
    """The band naming an export's recipe set (``data.band_names``, and ``data.channels``, which stacks
    single-channel files into its bands) and how it read its files (``data.sensor``, ``data.nodata``;
    :func:`export_data`): only the keys it set."""
    data = export_data(meta)
    return {k: list(data[k]) if isinstance(data[k], list) else data[k] for k in (*NAMING_KEYS, *READING_KEYS)
            if data.get(k) is not None and data.get(k) != []}


def note_encoder_naming(records: Sequence[Any], taken: dict[str, Any]) -> None:
    """Say which files were named and read as the encoder's recipe says (``taken``, from
    :func:`with_encoder_naming`)."""
    for key in (k for k in READING_KEYS if k in taken):
        log.info("note: data.%s is the encoder's recipe's (%s), how the files it was pretrained on were read; --set "
                 "data.%s=... reads this data otherwise", key, taken[key], key)
    if "channels" in taken:
        log.info("note: data.channels is the encoder's recipe's (%s): each folder's files matching them are stacked "
                 "as in pretraining; --set data.channels=null reads every file alone", taken["channels"])
    named = [r.path for r in records if r.band_source == "recipe"]
    if "band_names" in taken and named:
        log.info("note: the bands of %d file(s) without band descriptions ('%s'%s) are named by the encoder's recipe "
                 "(data.band_names: %s); --set data.band_names=[...] if they store their bands otherwise", len(named),
                 named[0], ", ..." if len(named) > 1 else "", " ".join(map(str, taken["band_names"])))


def naming_hint(err: Exception, taken: dict[str, list[Any]]) -> Exception:
    """An error about band names or channel files the encoder's recipe gave (``taken``), saying where they came
    from and how to read this data otherwise."""
    text = str(err)
    if "band_names" in taken and "data.band_names lists" in text:
        return type(err)(f"{err} (data.band_names is the encoder's recipe's: --set data.band_names=[...] names "
                         "this data's bands)")
    if "channels" in taken and "channels" in text:
        return type(err)(f"{err} (data.channels {taken['channels']} is the encoder's recipe's, which stacked one "
                         "file per band or sequence: --set data.channels=null reads each file alone, as files that "
                         "hold their bands already)")
    return err


def encoder_data_bands(cfg: EncoderConfig, catalog: Any) -> list[str]:
    """The catalog bands the encoder reads, in the order it reads them (see the module docstring)."""
    if cfg.embedding not in BAND_FLEXIBLE:
        return list(cfg.band_names)
    matches = match_bands(cfg.band_names, cfg.wavelengths, catalog.band_names, catalog.wavelengths)
    # in the encoder's order: a spectral embedding that tokenises chunks of adjacent bands (model.spectral_chunk)
    # must see them as in pretraining, whatever order a file stores them in
    kept = [m.name for m in sorted((m for m in matches if m.index is not None), key=lambda m: m.index)]
    if not kept:
        data_wl = any(w is not None for w in (catalog.wavelengths or []))
        enc_wl = any(w is not None for w in (cfg.wavelengths or []))
        hint = ("the encoder knows no band's wavelength (pretrained without them), so only names can match: use data "
                "with the encoder's band names (data.band_names)" if data_wl and not enc_wl else
                "give the data's bands' wavelengths (data.sensor or data.wavelengths) or use data with the encoder's "
                "bands")
        raise DataError(f"none of the data's bands ({brief(catalog.band_names)}) matches the encoder's "
                        f"({brief(cfg.band_names)}) by name or by centre wavelength (within 15 nm or 2 %); {hint}.")
    return kept  # the bands left out are said as the catalog is read in this order (bands.conform)


def catalog_for_encoder(cfg: EncoderConfig, catalog: Any) -> Any:
    """``catalog`` with every record read as :func:`encoder_data_bands` says (``conform_catalog``; an encoder that
    reads bands by name refuses same-named bands at other wavelengths)."""
    by_name = cfg.embedding not in BAND_FLEXIBLE  # the others were matched by wavelength already
    return conform_catalog(catalog, encoder_data_bands(cfg, catalog), cfg.wavelengths if by_name else None)


def records_for_stats(records: Sequence[Any], stats: BandStats) -> list[Any]:
    """Records read as the statistics' bands (by name), checked against their value range: for models whose
    bands are their statistics' (fine-tuned models, ``predict``, ``evaluate``)."""
    out = [conform_record(r, list(stats.band_names), stats.wavelengths) for r in records]
    check_value_ranges(out, stats)
    return out


def check_value_ranges(records: Sequence[Any], stats: BandStats) -> list[str]:
    """One warning naming the files and bands whose values are far from ``stats`` (``warn_far_from_stats``).

    Rasters only: a volume's statistics describe intensities after CT windowing / MR scaling, not the values the
    catalog's preview saw."""
    warn_other_scaling([(r.path, r.value_scaling) for r in records if r.kind == "raster"], stats)
    items = [(r.path, r.value_range) for r in records if r.kind == "raster" and r.value_range]
    return warn_far_from_stats(items, stats)


SCALE_SPREAD = 1.5  # a pixel / voxel this many times larger or smaller than the training one along an axis


def file_scale(record: Any, spacing: Sequence[float] | None = None) -> tuple[Any, ...] | None:
    """``(*size per axis, units)`` a file is read at (``record``: a catalog record, or a probe via :func:`as_record`):
    a raster's pixel on the ground (None without a CRS), a volume's voxel in mm in R, A, S order (``spacing``,
    ``data.spacing``, when set)."""
    if record.kind == "raster":
        x, y, units = pixel_size(record)
        return (round(x, 6), round(y, 6), units) if units not in ("px", "?") and not units.startswith("(") else None
    size = spacing or (reoriented_axes(record, record.spacing) if record.spacing else None)
    return (*(round(float(v), 4) for v in size), "mm") if size else None


def as_record(probe: Any, kind: str, path: str | None = None) -> Any:
    """What :func:`file_scale` reads of a file, from its probe (``geomed_ssl.data.probe.FileProbe``), named ``path``
    (default the probe's: a stack's folder for its first file)."""
    geo = probe.geo or {}
    return SimpleNamespace(path=path or probe.path, kind=kind, shape=probe.shape, transform=geo.get("transform"),
                           crs=geo.get("crs"), spacing=geo.get("spacing"), orientation=geo.get("orientation"))


def training_scale(records: Sequence[Any], spacing: Sequence[float] | None = None) -> dict[str, Any] | None:
    """The training files' pixel / voxel size (``EncoderConfig.scale``): per axis the median over the files of the
    most common units (scans' in-plane spacings and tiles at several latitudes all differ a little), None when none
    is known."""
    sizes = [s for s in (file_scale(r, spacing) for r in records) if s is not None]
    if not sizes:
        return None
    units, axes = Counter((s[-1], len(s) - 1) for s in sizes).most_common(1)[0][0]
    same = np.array([s[:-1] for s in sizes if s[-1] == units and len(s) - 1 == axes], np.float64)
    return {"size": [round(float(v), 6) for v in np.median(same, axis=0)], "units": units}


def warn_other_scale(records: Sequence[Any], scale: dict[str, Any] | None, spacing: Sequence[float] | None,
                     model: str) -> list[str]:
    """One warning naming the files whose pixels or voxels are over :data:`SCALE_SPREAD` times larger or smaller
    along an axis than those ``model`` was trained at (``scale``; files of other units, or unknown, are not
    compared): windows and tokens are cut in pixels, so the model sees them at another scale. The paths warned."""
    if not isinstance(scale, dict) or not scale.get("size"):
        return []
    off = []
    for r in records:
        size = file_scale(r, spacing)
        if size is None or size[-1] != scale.get("units") or len(size) - 1 != len(scale["size"]):
            continue
        ratio = max(max(a / b, b / a) for a, b in zip(size[:-1], scale["size"]) if a > 0 and b > 0)
        if ratio > SCALE_SPREAD:
            off.append((r.path, size, ratio))
    if off:
        path, size, ratio = max(off, key=lambda o: o[2])
        mm = lambda s, u: " x ".join(f"{float(v):.3g}" for v in s) + f" {u}"  # noqa: E731
        volume = size[-1] == "mm"
        log.warning(f"warning: {len(off)} of {len(records)} file(s) have {'voxels' if volume else 'pixels'} far from "
                    f"the {mm(scale['size'], scale['units'])} {model} was trained at (e.g. '{path}': "
                    f"{mm(size[:-1], size[-1])}, {ratio:.1f}x along an axis): windows and tokens are cut in "
                    f"{'voxels' if volume else 'pixels'}, so it sees "
                    f"{'anatomy' if volume else 'the ground'} at another scale than it learnt. Resample them to its "
                    + ("voxel size (or set data.spacing to it)." if volume else
                       "pixel size first (e.g. gdalwarp -tr X Y), unless that is what you mean to test."))
    return [p for p, _, _ in off]
