"""What one usable sample source is: :class:`FileRecord` (a file, or single-channel files stacked by
``data.channels``) built from the probes of its files (:func:`record_from_probes`: band names, alpha bands, value
scaling, validity), and :class:`Problem`, a file that cannot be used and why. ``geomed_ssl.data.catalog`` scans
folders into them."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from geomed_ssl.bands.names import resolve_band_info
from geomed_ssl.data.probe import FileProbe, ProbeError, reordered
from geomed_ssl.errors import DataError
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")


@dataclass
class FileRecord:
    """One usable sample source: a file, or several single-channel files stacked by ``data.channels``.

    ``shape`` is the spatial shape (H, W) of a raster or (X, Y, Z) of a volume in the FILE's array order (the volume
    reader reorients to RAS; ``orientation`` holds the file's axis codes). ``value_range`` is, per band,
    [min, p1, p99, max] of the valid pixels of the preview read (see ``geomed_ssl.data.probe``). ``band_source``
    says where the band names came from (``geomed_ssl.bands.names.BAND_SOURCES``), ``bandwidths`` are the bands'
    FWHM in µm (None: unknown). ``band_index`` (set by :func:`conform_record`): the readers return these of the
    file's bands, in this order, and every per-band field describes them.
    """

    path: str
    paths: list[str]
    kind: str
    shape: tuple[int, ...]
    num_bands: int
    dtype: str
    band_names: list[str]
    wavelengths: list[float | None] | None
    nodata: float | None
    crs: str | None = None
    transform: list[float] | None = None
    affine: list[list[float]] | None = None
    spacing: list[float] | None = None
    valid_fraction: float = 1.0
    block_shape: tuple[int, int] | None = None
    orientation: str | None = None
    value_range: list[list[float]] | None = None
    band_source: str | None = None
    bandwidths: list[float | None] | None = None
    band_index: list[int] | None = None
    value_scaling: list[list[float]] | None = None  # [scales, offsets] per band when not 1 / 0 (not applied)
    replaced_nodata: float | None = None  # the file's own nodata value, which data.nodata replaced, found in it
    case: str | None = None  # a stack's case where its folder holds several (geomed_ssl.files.cases)

    @property
    def area(self) -> int:
        """Number of pixels / voxels."""
        return int(np.prod(self.shape))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"shape": list(self.shape),
                                           "block_shape": list(self.block_shape) if self.block_shape else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileRecord:
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        d["block_shape"] = tuple(d["block_shape"]) if d.get("block_shape") else None
        return cls(**d)


def stack_input(record: FileRecord) -> str:
    """What commands take a stacked (``data.channels``) sample by: its folder, or, for one of several cases in a
    folder, its first channel file (``geomed_ssl.files.cases``)."""
    return record.path if record.case else os.path.dirname(record.path)


def reoriented_shape(record: FileRecord, axcodes: str = "RAS") -> tuple[int, ...]:
    """A volume's spatial shape after reorientation to ``axcodes`` (the volume reader's order before resampling)."""
    return tuple(int(v) for v in reoriented_axes(record, record.shape, axcodes))


def reoriented_axes(record: FileRecord, values: Sequence[Any], axcodes: str = "RAS") -> tuple[Any, ...]:
    """Per-axis ``values`` of a volume in its file's axis order (shape, voxel sizes) in ``axcodes`` order."""
    if record.kind != "volume" or not record.orientation:
        return tuple(values)
    return reordered(record.orientation, values, axcodes)


@dataclass
class Problem:
    """A file (or folder, for stacked channels) that cannot be used, and why."""

    path: str
    reason: str

    def __post_init__(self) -> None:
        self.reason = self.reason.rstrip(". ")  # messages add their own full stop

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _valid_fraction(probes: list[FileProbe]) -> float:
    """Valid fraction of the stack: pixels valid in every channel file when their previews cover the same pixels,
    else (channel files sampled differently, e.g. other block layouts) the lowest fraction of any file."""
    masks = [p.valid for p in probes]
    same = all(m.shape == masks[0].shape and p.preview == probes[0].preview
               and p.geo.get("block_shape") == probes[0].geo.get("block_shape") for p, m in zip(probes, masks))
    if same:
        valid = np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]
        return float(valid.mean()) if valid.size else 0.0
    return min(float(m.mean()) if m.size else 0.0 for m in masks)


_alpha_noted: set[tuple[tuple[int, ...], int | None]] = said_set()  # (alpha bands, the one holding data) noted


def _note_alpha(path: str, bands: list[int], ranges: Sequence[Sequence[float]] = ()) -> None:
    """Say once per layout that the alpha bands at ``bands`` (1-based) are read as the mask, not as bands; a
    warning when one holds values between 0 and its maximum (its [min, p1, p99, max] in ``ranges``, one per band
    of the stack): a band of data GDAL was told, or chose, to call alpha (a 4-band 8-bit GeoTIFF written as RGBA)."""
    data = next((b for b in bands if b <= len(ranges) and _holds_data(ranges[b - 1])), None)
    if (tuple(bands), data) in _alpha_noted:
        return
    _alpha_noted.add((tuple(bands), data))
    if data is not None:
        _, p1, p99, _ = ranges[data - 1]
        log.warning("warning: band %d of '%s' (and of files like it) is tagged alpha, the mask of missing pixels, but "
                    "holds values between 0 and its maximum (1st-99th percentile %g-%g): if it is a band of data "
                    "(GDAL writes a 4-band 8-bit GeoTIFF as RGBA unless told otherwise), untag it (gdal_translate "
                    "-colorinterp_%d undefined IN OUT) so that it is read as a band", data, path, p1, p99, data)
        return
    log.info("note: band %s of '%s' (and of files like it) is an alpha band: read as the mask of missing pixels, "
             "not as a band to learn from", ", ".join(map(str, bands)), path)


def _holds_data(value_range: Sequence[float]) -> bool:
    """An alpha band's [min, p1, p99, max] says it holds data: its 1st or 99th percentile is neither 0 nor its
    maximum (a mask holds those two; a feathered edge stays under 1 % of the pixels)."""
    _, p1, p99, high = value_range
    return math.isfinite(p1) and math.isfinite(p99) and bool({p1, p99} - {0.0, high})


def is_blank(value_range: list[list[float]] | None) -> bool:
    """Every band holds one value (its [min, p1, p99, max] from the probe: min == max): a blank scan."""
    return bool(value_range) and all(v[0] == v[3] for v in value_range)  # type: ignore[union-attr]


BLANK_VOLUMES = ("warning: %d volume(s) hold one value in every voxel (blank scans?), e.g. '%s': nothing to learn "
                 "from or predict; replace them or leave them out (data.exclude).")


def blank_volumes(records: Sequence[Any]) -> list[str]:
    """The paths of the volume ``records`` that hold one value in every voxel (:func:`is_blank`)."""
    return [r.path for r in records if r.kind == "volume" and is_blank(r.value_range)]


def stack_nodata(data_cfg: Any) -> float | None:
    """The nodata value of a stack of single-band files: ``data.nodata`` when set (NaN kept: set, it replaces
    every file's tag, as a single file's), else none, since each file's own tag marks its own pixels missing as it
    is read (``geo.gdal_read.read_masked``, ``stacked``: a pixel any channel file misses is missing, as the
    catalog counts it), the first file's as the others' (it was the stack's, so one channel's holes counted
    otherwise than another's, and its value hid the others' real values)."""
    value = getattr(data_cfg, "nodata", None)
    return None if value is None else float(value)


def record_from_probes(probes: list[FileProbe], kind: str, data_cfg: Any,
                       fallback: list[str] | None = None) -> FileRecord:
    """Stack probes (one, or one per channel) into a FileRecord; raises ProbeError."""
    first = probes[0]
    fraction = _valid_fraction(probes)
    if fraction == 0.0:
        nd = f"nodata={first.nodata:g}" if first.nodata is not None else "no nodata value set"
        raise ProbeError(f"all pixels are nodata or NaN ({nd}, estimated from a decimated read)")
    descriptions, tags, alpha, scales, offsets = [], [], [], [], []  # every band of the stack, file after file
    for p in probes:
        masks = set(p.geo.get("alpha_bands") or [])
        s, o = p.geo.get("value_scaling") or ([1.0] * p.num_bands, [0.0] * p.num_bands)  # 1 / 0: none
        descriptions += p.descriptions
        tags += [p.tags.get(b + 1, {}) for b in range(p.num_bands)]
        alpha += [b in masks for b in range(p.num_bands)]
        scales, offsets = scales + list(s), offsets + list(o)
    keep = [i for i, a in enumerate(alpha) if not a]  # the bands read: alpha bands are a mask, not bands to learn
    hidden = [i + 1 for i, a in enumerate(alpha) if a]

    def pick(seq: list[Any]) -> list[Any]:
        return [seq[i] for i in keep]

    try:
        bands = resolve_band_info(len(keep), pick(descriptions), dict(enumerate(pick(tags), start=1)), data_cfg,
                                  first.path, fallback_names=fallback)
    except DataError as err:
        alpha_text = (f" (not counting its alpha band {', '.join(map(str, hidden))}: the mask of missing pixels)"
                      if hidden else "")
        raise ProbeError(str(err).replace(f"'{first.path}' ", "", 1) + alpha_text) from None
    if hidden:
        _note_alpha(first.path, hidden, [r for p in probes for r in p.value_range])
    scales, offsets = pick(scales), pick(offsets)
    scaling = None if all(v == 1 for v in scales) and all(v == 0 for v in offsets) else [scales, offsets]
    return FileRecord(
        path=first.path, paths=[p.path for p in probes], kind=kind, shape=tuple(first.shape), num_bands=len(keep),
        dtype=str(np.result_type(*[p.dtype for p in probes])), band_names=bands.names, wavelengths=bands.wavelengths,
        nodata=first.nodata if len(probes) == 1 else stack_nodata(data_cfg), band_source=bands.source,
        bandwidths=bands.bandwidths,
        crs=first.geo.get("crs"), transform=first.geo.get("transform"), affine=first.geo.get("affine"),
        spacing=first.geo.get("spacing"), valid_fraction=round(fraction, 6), block_shape=first.geo.get("block_shape"),
        orientation=first.geo.get("orientation"), value_range=pick([v for p in probes for v in p.value_range]),
        value_scaling=scaling, band_index=keep if hidden else None,
        replaced_nodata=next((p.geo["replaced_nodata"] for p in probes if p.geo.get("replaced_nodata") is not None),
                             None),
    )
