"""Per-band statistics over sampled windows (nodata and NaN excluded), normalisation, and the range check.

The statistics are computed once per dataset, stored as ``stats.json`` and in every checkpoint, so inference
normalises exactly as training did. They are always computed from the data (16-bit rasters get their real range,
never a 0/255 default).

The range check of new data against these statistics is :mod:`geomed_ssl.bands.ranges`.

Format versions: normalisation clips each band to [p1, p99] and then z-scores it. Version 3 (now) stores the mean
and std of the CLIPPED values, i.e. of what the network is actually fed, so normalised data has mean 0 and std 1,
and leaves a band's own nodata values (gaps in pixels other bands cover) out of them; those are fed as 0. Version 2
counted such gaps in the band's statistics and fed them as read (clipped); version 1 also stored the mean and std
of the unclipped values. Older statistics (``stats.json``, checkpoints and encoder exports) are still read and
used exactly as they are, gaps included: a model trained with them was fed data normalised with them, and only the
same numbers and rule reproduce its inputs (recomputing would shift every input the model sees). A one-time note
says so; pretraining again gives version-3 statistics.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from geomed_ssl.config import as_tuple, spatial_dims
from geomed_ssl.cpus import physical_memory
from geomed_ssl.bands.conform import pick_bands
from geomed_ssl.geo.gdal_read import window_reads
from geomed_ssl.data.intensity import ct_bounds, intensity_args, preprocess_intensity
from geomed_ssl.geo.validity import STD_FLOOR, band_gaps, band_percentiles, valid_mask, valid_values
from geomed_ssl.errors import DataError, innermost_message
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")

PERCENTILE_SAMPLE = 200_000  # values per band kept (in expectation at most) for p1/p99
MAX_KEPT_VALUES = 20_000_000  # ... and over all bands (float32), so 200-band data stays under ~80 MB
WHOLE_VOLUME_BYTES = 1 << 30  # volumes up to this (or an eighth of RAM) are decoded once for all their windows
STATS_VERSION = 3  # 3: a band's own nodata left out and fed as 0; 2: mean/std of the values clipped to [p1, p99]
STATS_VERSIONS = (1, 2, 3)  # (what is fed); 1: of the unclipped values
_NOTED_V1: set[str] = said_set()
_NOTED_GAPS: set[bool] = said_set()  # the note on statistics older than version 3 meeting a band's own nodata

ReadWindow = Callable[[Any, tuple[int, ...], tuple[int, ...]], np.ndarray]


@dataclass
class BandStats:
    """Per-band mean, std (floored at 1e-6) of the values clipped to [p1, p99], the 1st/99th percentiles and the
    valid sample count; ``version`` is the format they were computed with (see the module docstring)."""

    band_names: list[str]
    mean: list[float]
    std: list[float]
    p1: list[float]
    p99: list[float]
    count: list[int]
    version: int = STATS_VERSION
    # the model's centre wavelengths (µm) of these bands, when known (from its encoder config; not in stats.json):
    # the band rule refuses data whose same-named bands lie elsewhere (bands.matching.check_band_wavelengths)
    wavelengths: list[float | None] | None = field(default=None, compare=False)
    # [scales, offsets] of these bands in the GeoTIFF tags of the files they were computed on (1 / 0: none), when
    # those files agreed (None: unknown, or mixed): values are read as stored, so a model meets other numbers in files
    # tagged otherwise (bands.ranges.warn_other_scaling)
    scaling: list[list[float]] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``stats.json`` schema: {"bands": [{"name", "mean", "std", "p1", "p99", "count"}, ...], "version": 3}
        (1 or 2 for statistics read from those versions: they keep their meaning)."""
        bands = [{"name": n, "mean": m, "std": s, "p1": a, "p99": b, "count": c}
                 for n, m, s, a, b, c in zip(self.band_names, self.mean, self.std, self.p1, self.p99, self.count)]
        if self.scaling is not None:
            for band, scale, offset in zip(bands, *self.scaling):
                band.update(scale=scale, offset=offset)
        return {"bands": bands, "version": self.version}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "stats") -> BandStats:
        """Read version 3, 2 or 1 (the older ones used as they are, version 1 with a one-time note per source)."""
        if not isinstance(d, dict) or d.get("version") not in STATS_VERSIONS or not isinstance(d.get("bands"), list) \
                or not d["bands"]:
            raise DataError(f"{source}: not a band statistics dict of version 1, 2 or 3 ({{'bands': [...], 'version': "
                            f"{STATS_VERSION}}}); recompute the statistics.")
        keys = ("name", "mean", "std", "p1", "p99", "count")
        for i, band in enumerate(d["bands"]):
            missing = [k for k in keys if k not in band]
            if missing:
                raise DataError(f"{source}: band {i} lacks {missing}; recompute the statistics.")
        if d["version"] == 1 and source not in _NOTED_V1:
            _NOTED_V1.add(source)
            log.info("note: %s: version-1 band statistics (mean/std of the unclipped values), used as they are so data "
                     "is normalised exactly as when this model was trained; pretraining again stores version 3 "
                     "(mean/std of the values clipped to [p1, p99]).", source)
        try:
            col = lambda k, t: [t(b[k]) for b in d["bands"]]  # noqa: E731
            # version 2 with counts that differ by band was written under version 3's rule (2026-12-05, before the
            # version was raised): only leaving a band's own gaps out gives bands unequal counts
            version = 3 if d["version"] == 2 and len(set(col("count", int))) > 1 else int(d["version"])
            stats = cls(col("name", str), col("mean", float), col("std", float), col("p1", float),
                        col("p99", float), col("count", int), version=version)
            if all("scale" in b and "offset" in b for b in d["bands"]):
                stats.scaling = [col("scale", float), col("offset", float)]
        except (TypeError, ValueError):
            raise DataError(f"{source}: band statistics hold a value that is not a number; recompute them.") from None
        bad = next((i for i in range(len(stats.band_names)) if not all(math.isfinite(v) for v in (
            stats.mean[i], stats.std[i], stats.p1[i], stats.p99[i])) or stats.std[i] <= 0
            or stats.p1[i] > stats.p99[i] or stats.count[i] < 0), None)
        if bad is not None:  # normalising by them would turn every pixel into NaN / inf without a word
            raise DataError(f"{source}: the statistics of band '{stats.band_names[bad]}' are not usable (mean "
                            f"{stats.mean[bad]:g}, std {stats.std[bad]:g}, p1 {stats.p1[bad]:g}, p99 "
                            f"{stats.p99[bad]:g}, "
                            f"count {stats.count[bad]}: finite, std > 0, p1 <= p99 expected); recompute them.")
        return stats

    def save(self, path: str | Path) -> None:
        """Write the statistics as JSON, atomically."""
        from geomed_ssl.outfiles import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> BandStats:
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as err:
            raise DataError(f"cannot read band statistics '{path}' ({err.strerror}).") from None
        except ValueError as err:
            raise DataError(f"band statistics '{path}' is not valid JSON ({err}); recompute it.") from None
        return cls.from_dict(raw, source=str(path))

    def arrays(self, ndim: int = 0) -> dict[str, np.ndarray]:
        """float32 mean/std/p1/p99 shaped (C, 1, ...) with ``ndim`` trailing singleton axes for broadcasting."""
        shape = (len(self.band_names),) + (1,) * ndim
        return {k: np.asarray(getattr(self, k), np.float32).reshape(shape) for k in ("mean", "std", "p1", "p99")}


def normalize(array: np.ndarray, stats: BandStats, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Clip each band to [p1, p99], z-score with mean/std; invalid pixels become 0.

    ``array`` (C, *spatial) -> (float32 (C, *spatial), valid bool (*spatial)).
    """
    array = np.asarray(array)
    if array.shape[0] != len(stats.band_names):
        raise DataError(f"normalize: the array has {array.shape[0]} bands but the statistics have "
                        f"{len(stats.band_names)} ({' '.join(stats.band_names)}); the data and statistics disagree.")
    valid = valid_mask(array, nodata)  # (*spatial)
    a = stats.arrays(array.ndim - 1)
    out = array.astype(np.float32, copy=True)  # (C, *spatial)
    np.clip(out, a["p1"], a["p99"], out=out)
    out -= a["mean"]
    out /= a["std"]
    gaps = band_gaps(array, nodata)
    if gaps is not None and stats.version >= 3:
        out[gaps] = 0.0
    elif gaps is not None and not _NOTED_GAPS and gaps[:, valid].any():
        _NOTED_GAPS.add(True)
        log.info("note: a band's own nodata value (%g) lies in pixels other bands cover; the model's band statistics "
                 "(version %d) predate version 3, so it is fed as read, as when the model was trained. Pretraining "
                 "again leaves such gaps out of the statistics and feeds them as the band's mean.", nodata,
                 stats.version)
    out[:, ~valid] = 0.0
    return out, valid


class _FileWindows:
    """Window reads from one record: rasterio windowed reads (``window_reads``: a raster that ``windows`` windows of
    ``size`` would read over is read once), or a nibabel volume (decoded once when small)."""

    def __init__(self, record: Any, windows: int = 0, size: tuple[int, ...] = (0, 0)):
        self.record, self.ds, self.volume, self.proxies = record, None, None, None
        if record.kind == "raster":
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = [rasterio.open(p) for p in record.paths]
            stacked = len(self.ds) > 1  # as RasterReader.read_window
            self.reads = [window_reads(d, record.nodata, stacked, windows, size[-2:], len(self.ds)) for d in self.ds]
        else:
            import nibabel as nib

            self.proxies = [nib.load(p).dataobj for p in record.paths]
            if record.area * record.num_bands * 4 <= max(WHOLE_VOLUME_BYTES, physical_memory() // 8):
                self.volume = self._stack([np.asarray(p, dtype=np.float32) for p in self.proxies])

    @staticmethod
    def _stack(parts: list[np.ndarray]) -> np.ndarray:  # each (x, y, z) or (x, y, z, C) -> (C, x, y, z)
        return np.concatenate([p[None] if p.ndim == 3 else np.moveaxis(p, -1, 0) for p in parts], axis=0)

    def read(self, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
        """(C, *size') float32 window clipped to the file (padding would only be invalid pixels)."""
        if self.ds is not None:
            from rasterio.windows import Window

            win = Window(start[1], start[0], size[1], size[0])
            parts = [read(win) for read in self.reads]
            return pick_bands(np.concatenate([p.astype(np.float32, copy=False) for p in parts], axis=0), self.record)
        box = tuple(slice(s, s + n) for s, n in zip(start, size))
        if self.volume is not None:
            return pick_bands(self.volume[(slice(None), *box)], self.record)
        return pick_bands(self._stack([np.asarray(p[box], dtype=np.float32) for p in self.proxies]), self.record)

    def close(self) -> None:
        for d in self.ds or []:
            d.close()


def compute_stats(catalog: Any, data_cfg: Any, seed: int = 0, read_window: ReadWindow | None = None) -> BandStats:
    """Band statistics over ``data.stats_windows`` windows of ``data.patch_size`` sampled from the catalog.

    Files are drawn with probability proportional to area * valid_fraction and windows uniformly inside them
    (clipped to the file). Only valid pixels count (all bands finite, not all equal to nodata). Volumes get
    ``preprocess_intensity`` first (voxel order of the file; ``data.spacing`` resampling is not applied).
    p1/p99 come from a uniform sample of the valid values (all of them when few: at most ``PERCENTILE_SAMPLE`` per
    band), and mean/std from the same sample clipped to [p1, p99]: the statistics of what ``normalize`` feeds
    (format version 3: a band's own nodata values left out). ``read_window(record, start, size) -> (C, *size)``
    replaces the built-in reader.
    """
    records = list(catalog.records)
    if not records:
        raise DataError("compute_stats: the catalog has no usable files.")
    names = list(catalog.band_names)
    window = as_tuple(data_cfg.patch_size, spatial_dims(data_cfg), "data.patch_size")
    n_windows = int(data_cfg.stats_windows)
    if n_windows <= 0:
        raise DataError(f"data.stats_windows must be positive, got {n_windows}.")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(records), size=n_windows, p=catalog.weights())
    per_band = min(PERCENTILE_SAMPLE, MAX_KEPT_VALUES // max(len(names), 1))
    keep_prob = min(1.0, per_band / (n_windows * float(np.prod(window))))
    count, kept = np.zeros(len(names), np.int64), []
    for idx in np.unique(picks):
        rec = records[idx]
        if rec.num_bands != len(names):
            raise DataError(f"'{rec.path}' has {rec.num_bands} bands but the catalog has {len(names)}; rescan it.")
        file_count, file_kept = _sample_file(rec, int((picks == idx).sum()), window, data_cfg, rng, keep_prob,
                                             read_window)
        count += file_count
        kept.extend(file_kept)
    stats = _band_stats(names, count, kept, n_windows, ct_bounds(records, data_cfg))
    stats.scaling = shared_scaling(records)
    return stats


def shared_scaling(records: Sequence[Any]) -> list[list[float]] | None:
    """The [scales, offsets] every raster of ``records`` carries in its tags (1 / 0 for none), None when they
    differ (warned about when the catalog is read) or the files are volumes (nibabel applies NIfTI's scaling)."""
    seen = {json.dumps(r.value_scaling or [[1.0] * r.num_bands, [0.0] * r.num_bands]) for r in records
            if r.kind == "raster"}
    if len(seen) != 1 or any(r.kind != "raster" for r in records):
        return None
    return [[float(v) for v in row] for row in json.loads(seen.pop())]


def _sample_file(rec: Any, windows: int, window: tuple[int, ...], data_cfg: Any, rng: np.random.Generator,
                 keep_prob: float, read_window: ReadWindow | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """``windows`` random windows of one file (starts drawn from ``rng``): the valid values per band (C,) int64,
    and a sample of them (each kept with ``keep_prob``, at least one per window that has any) as (C, m) float32
    arrays. Read errors other than a DataError become one naming the file."""
    count, kept = np.zeros(rec.num_bands, np.int64), []
    source = None
    try:
        source = None if read_window is not None else _FileWindows(rec, windows, window)
        intensity = intensity_args(rec, data_cfg) if rec.kind == "volume" else {}
        for _ in range(windows):
            start = tuple(int(rng.integers(0, max(s - w, 0) + 1)) for s, w in zip(rec.shape, window))
            size = tuple(min(w, s) for s, w in zip(rec.shape, window))
            arr = read_window(rec, start, size) if read_window is not None else source.read(start, size)
            arr = np.asarray(arr)
            valid = valid_mask(arr, rec.nodata)  # (*size)
            gaps = band_gaps(arr, rec.nodata)
            if rec.kind == "volume":
                arr = preprocess_intensity(arr, data_cfg, valid=valid, **intensity)
            vals = valid_values(arr, valid, gaps, np.float32)  # (C, n_valid); gaps of the values as read
            count += np.isfinite(vals).sum(axis=1)
            if vals.shape[1]:
                take = rng.random(vals.shape[1]) < keep_prob
                if not take.any():
                    take[rng.integers(vals.shape[1])] = True
                kept.append(vals[:, take].astype(np.float32))
    except DataError:
        raise
    except Exception as err:
        reason = innermost_message(err).rstrip(".")
        raise DataError(f"cannot read windows from '{rec.path}' for statistics ({reason}): part of its pixel data is "
                        "corrupt (the scan checks only a sample of each file). Replace the file, or leave it out "
                        "with --set \"data.exclude=[...]\" (its name or a glob).") from None
    finally:
        if source is not None:
            source.close()
    return count, kept


def _band_stats(names: list[str], count: np.ndarray, kept: list[np.ndarray], n_windows: int,
                bounds: tuple[float, float] | None = None) -> BandStats:
    """Percentiles, and mean / std of the values clipped to them, from the sampled values (a list of (C, m));
    ``bounds``: the clip of every band instead of its percentiles (CT's window)."""
    if not kept or not any(k.shape[1] for k in kept):
        raise DataError(f"band(s) {names} have no valid pixels in {n_windows} sampled windows (nodata and NaN "
                        "excluded); check data.nodata and that the files hold data, or raise data.stats_windows.")
    sample = np.concatenate(kept, axis=1).astype(np.float64)  # (C, m); NaN: a band's gap in a valid pixel
    gappy = bool(np.isnan(sample).any())
    if gappy:
        blank = ~np.isfinite(sample).any(axis=1)  # a band holding only its nodata value where others hold data
        if blank.any():
            log.warning(f"warning: band(s) {[n for n, b in zip(names, blank) if b]} hold only their nodata value in "
                        f"the {n_windows} sampled windows: they are fed as 0 (their mean) and carry nothing; leave "
                        "them out of the files, or raise data.stats_windows if they hold data elsewhere.")
            sample[blank] = 0.0
    p1, p99 = band_percentiles(sample, [1, 99])
    if bounds is not None:
        p1, p99 = np.full(len(names), bounds[0]), np.full(len(names), bounds[1])
    flat = [n for n, a, b, g in zip(names, p1, p99, blank if gappy else [False] * len(names)) if a == b and not g]
    if flat:  # normalised to 0 everywhere; new data with another value there reads as far from the statistics
        log.warning(f"warning: band(s) {flat} are (nearly) constant in the {n_windows} sampled windows (e.g. "
                    f"{flat[0]}: {float(p1[names.index(flat[0])]):g} at both its 1st and 99th percentile): they carry "
                    "little to learn from; leave them out of the files if that is so everywhere.")
    clipped = np.clip(sample, p1[:, None], p99[:, None], out=sample)  # what normalize feeds: its mean and std
    mean, std = (np.nanmean(clipped, axis=1), np.nanstd(clipped, axis=1)) if gappy else \
        (clipped.mean(axis=1), clipped.std(axis=1))
    return BandStats(
        band_names=names, mean=[float(v) for v in mean], std=[float(max(s, STD_FLOOR)) for s in std],
        p1=[float(v) for v in p1], p99=[float(v) for v in p99], count=[int(c) for c in count],
    )
