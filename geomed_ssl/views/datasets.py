"""Datasets for pretraining: random windows (rasters) or patches (volumes), as a pure function of (seed, index).

Sampling (``PretrainDataset``): indices come in groups of ``data_cfg.windows_per_read``; a group shares one file
and, for rasters, one block-aligned region, so the region is read once and cut into many windows. Every random
choice comes from a generator seeded by ``(seed, tag, index)``; nothing depends on call order, worker or process,
so a resumed run sees exactly the same batches (use a sequential sampler: the randomness is in the dataset). Each
sample carries its ``index`` (batched: ``batch["index"]`` (B,)), from which methods draw their per-sample randomness
(``methods.base.PerSample``), so a sample is the same on whichever rank of a DDP run it lands.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from geomed_ssl.config import as_tuple, spatial_dims
from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import normalize
from geomed_ssl.geo.validity import valid_mask
from geomed_ssl.errors import DataError
from geomed_ssl.geo.grids import grid_identity

# Distinct seed-sequence tags so the streams for file, window, view and date-pair choices never coincide.
TAG_FILE, TAG_WINDOW, TAG_VIEW, TAG_MATE, TAG_REFILE = 101, 202, 303, 404, 505
REFILES = 4  # other files tried: for a window when the drawn file's regions hold no valid pixel; for a date pair
FOREGROUND_STEP = 0.05  # a voxel is foreground this far (a fraction of the p1-p99 range) above a channel's p1


def foreground_levels(volume: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Per channel (C,) the level above which a voxel of ``volume`` (C, *S), preprocessed as sampled, is foreground:
    ``FOREGROUND_STEP`` of the way from its 1st to its 99th valid percentile (``nodata`` and NaN left out: a CT's
    -3024 padding outside the scanner's field of view), so air (CT, clipped to the window's low end) and the
    constant background around a skull-stripped brain fall below it and tissue, lungs included, above. A channel
    without spread (or without valid voxels) has +inf: no foreground from it."""
    levels = np.full(volume.shape[0], np.inf)
    for c, channel in enumerate(volume):
        sample = channel[::2, ::2, ::2]
        sample = sample[valid_mask(sample[None], nodata)]
        if sample.size:
            lo, hi = np.percentile(sample, [1, 99])
            if hi > lo:
                levels[c] = lo + FOREGROUND_STEP * (hi - lo)
    return levels


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def grid_key(record: Any) -> tuple:
    """What two files must share for one window to be one place in both: kind, the pixel grid (rasters:
    ``geo.grids.grid_identity``, origins to a thousandth of a pixel) or affine (volumes), and bands."""
    affine = tuple(round(float(v), 9) for v in np.ravel(record.affine)) if record.affine is not None else ()
    return (record.kind, grid_identity(record.shape, record.crs, record.transform), affine,
            tuple(record.band_names or ()))


def same_grid_mates(records: Sequence[Any]) -> list[list[int]]:
    """Per record, the indices of the other records on its grid (:func:`grid_key`): the dates of one scene. A raster
    without a CRS has none: nothing places it on the ground, and unrelated patches (38-Cloud's, tiles cut from
    pictures) share the identity transform and a size."""
    keys = [grid_key(r) if r.kind != "raster" or r.crs else ("ungeoreferenced", i) for i, r in enumerate(records)]
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [[j for j in groups[key] if j != i] for i, key in enumerate(keys)]


class PretrainDataset(Dataset):
    """Map-style random windows/patches for self-supervised pretraining.

    Args:
        catalog: a ``Catalog`` (``records`` of one kind).
        stats: ``BandStats`` for the catalog's bands (normalisation).
        data_cfg: ``DataConfig`` (patch_size, windows_per_read, min_valid_fraction, nodata, ...).
        view: a view from ``build_views`` (called with ``rng(seed, i, view)``). With ``data_cfg.date_pairs`` and a
            pair view (``view.pairs``), the window is also read from another file on the same grid, when there is
            one (chosen by ``(seed, i)``), and given to the view as ``second``.
        seed: the sampling seed; ``length``: nominal number of samples.
        max_attempts: window draws per sample before the best one seen is taken despite low valid area;
            ``tries_per_region`` of them per region before the group's next region is tried.
        raster_reader / volume_reader: readers to share (default: new ones, caches per process).
    """

    def __init__(
        self,
        catalog: Any,
        stats: Any,
        data_cfg: Any,
        view: Any,
        seed: int = 0,
        length: int = 10**9,
        raster_reader: RasterReader | None = None,
        volume_reader: VolumeReader | None = None,
        max_attempts: int = 16,
        tries_per_region: int = 4,
    ):
        self.records = list(catalog.records)
        if not self.records:
            raise DataError("the catalog has no usable files; catalog.summary() lists why each file was skipped.")
        self.stats, self.data_cfg, self.view = stats, data_cfg, view
        self.seed, self.length, self.max_attempts = int(seed), int(length), max(1, int(max_attempts))
        self.tries_per_region = max(1, int(tries_per_region))
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        self.ndim = spatial_dims(data_cfg)
        self.window = as_tuple(data_cfg.patch_size, self.ndim, "data.patch_size")
        self.group = max(1, int(data_cfg.windows_per_read))
        kinds = {r.kind for r in self.records}
        expected = "raster" if self.ndim == 2 else "volume"
        if kinds != {expected}:
            raise DataError(
                f"data.kind is '{data_cfg.kind}' but the catalog holds {sorted(kinds)} files; "
                "set data.kind to match the folder or narrow data.include."
            )
        self._check_stats()
        spacing = getattr(data_cfg, "spacing", None) if self.ndim == 3 else None
        self._cum = np.cumsum(catalog.weights(spacing))  # files weighted by valid area, volumes as resampled
        self.raster_reader = raster_reader or (RasterReader() if self.ndim == 2 else None)
        self.volume_reader = volume_reader or (VolumeReader(data_cfg) if self.ndim == 3 else None)
        self._valid_regions: dict[tuple, bool] = {}
        self._levels: dict[tuple, np.ndarray | None] = {}
        pairs = getattr(data_cfg, "date_pairs", False) and getattr(view, "pairs", False)
        self.mates = same_grid_mates(self.records) if pairs else [[] for _ in self.records]

    def _check_stats(self) -> None:
        n_stats = len(self.stats.mean)
        for r in self.records:
            if r.num_bands != n_stats:
                raise DataError(
                    f"'{r.path}' has {r.num_bands} bands but the statistics have {n_stats}; "
                    "the data and the statistics must hold the same bands. A resumed run keeps its stats.json: give it "
                    "data with the bands it was trained on, or start a new run; otherwise recompute the statistics."
                )
        names = list(getattr(self.stats, "band_names", None) or [])
        for r in self.records:
            if names and r.band_names and list(r.band_names) != names:
                raise DataError(
                    f"'{r.path}' has bands {list(r.band_names)} but the statistics are for {names}; "
                    "a resumed run keeps its stats.json: give it the bands it was trained on, in that order (or leave "
                    "such files out with data.exclude), or start a new run; otherwise fix data.band_names / "
                    "data.sensor or recompute the statistics."
                )

    def __len__(self) -> int:
        return self.length

    def _nodata(self, record: Any) -> float | None:
        return self.data_cfg.nodata if self.data_cfg.nodata is not None else record.nodata

    def _pick_file(self, g: int) -> tuple[int, np.random.Generator]:
        rng = _rng(self.seed, TAG_FILE, g)
        idx = int(np.searchsorted(self._cum, rng.random(), side="right"))
        return min(idx, len(self.records) - 1), rng

    def _regions(self, record: Any, g_rng: np.random.Generator) -> Iterator[tuple[list[tuple[int, int]], Callable]]:
        """The group's region sequence: (per axis the first and last window start, read(pos)). Every index of a
        group walks the same sequence, so a region found poor is left for the same next region by all of them (still
        cached)."""
        if self.ndim == 3:
            shape = self.volume_reader.volume_shape(record)
            read = lambda pos: self.volume_reader.read_box(record, *pos, *self.window)  # noqa: E731
            starts = [(0, n - w) if n >= w else (n - w, 0) for n, w in zip(shape, self.window)]
            while True:
                yield starts, read
        reader, nodata, empty = self.raster_reader, self._nodata(record), 0
        while True:
            region, starts = reader.draw_region(record, self.window, g_rng)
            if empty < self.max_attempts and not self._holds_valid(record, region, nodata):
                empty += 1  # no valid pixel in it (a swath edge, a nodata collar): the next region, with no try spent
                continue
            yield starts, (lambda pos, region=region: reader.read_window(record, *pos, *self.window, region=region))

    def _holds_valid(self, record: Any, region: tuple[int, ...], nodata: float | None) -> bool:
        """Whether the region holds a valid pixel (kept per process: a fact of the file, so no sample depends on
        which process asked first)."""
        key = (record.path, tuple(region))
        if key not in self._valid_regions:
            if len(self._valid_regions) > 100_000:
                self._valid_regions.clear()
            self._valid_regions[key] = bool(valid_mask(self.raster_reader.read_region(record, region), nodata).any())
        return self._valid_regions[key]

    def _draw(self, record: Any, g_rng: np.random.Generator, i: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Normalised (C, *window) array, valid mask and [*start, *size] of the chosen window.

        Windows with valid fraction below ``data.min_valid_fraction`` (volumes: or foreground fraction below
        ``data.min_foreground_fraction``, :func:`foreground_levels`) are redrawn: ``tries_per_region`` positions
        per region, then the group's next region, ``max_attempts`` in all; then the best window seen is used (the
        one nearest both bounds). Raster regions without a valid pixel are passed over (up to ``max_attempts`` of
        them) without spending a try.
        """
        rng = _rng(self.seed, TAG_WINDOW, i)
        nodata, best = self._nodata(record), None
        regions = self._regions(record, g_rng)
        levels = self._foreground_levels(record)
        min_valid, min_fg = self.data_cfg.min_valid_fraction, getattr(self.data_cfg, "min_foreground_fraction", 0.0)
        for attempt in range(self.max_attempts):
            if attempt % self.tries_per_region == 0:
                starts, read = next(regions)
            pos = [int(rng.integers(lo, hi + 1)) for lo, hi in starts]
            box = read(pos)
            image, valid = normalize(box, self.stats, nodata)
            score = min(1.0, float(valid.mean()) / min_valid) if min_valid > 0 else 1.0
            if levels is not None:
                above = valid & (box > levels.reshape(-1, *[1] * self.ndim)).any(axis=0)
                fg = float(above.sum()) / max(int(valid.sum()), 1)  # of the valid voxels: padding is the rule above
                score = min(score, fg / min_fg)
            if best is None or score > best[0]:
                best = (score, image, valid, pos)
            if score >= 1.0:
                break
        _, image, valid, pos = best  # type: ignore[misc]
        return image, valid, [*pos, *self.window]

    def _foreground_levels(self, record: Any) -> np.ndarray | None:
        """A volume's :func:`foreground_levels` (kept per process: a fact of the file), or None where the
        foreground is not asked for (rasters, ``data.min_foreground_fraction`` 0) or cannot be told (no channel
        with any spread: every window is as good)."""
        if self.ndim != 3 or not getattr(self.data_cfg, "min_foreground_fraction", 0.0):
            return None
        key = tuple(getattr(record, "paths", None) or [record.path])
        if key not in self._levels:
            levels = foreground_levels(self.volume_reader.load(record)[0], self._nodata(record))
            self._levels[key] = levels if np.isfinite(levels).any() else None
        return self._levels[key]

    def _meta(self, record: Any, box: list[int]) -> dict[str, Any]:
        paths = list(record.paths) if getattr(record, "paths", None) else [record.path]
        meta: dict[str, Any] = {
            "path": paths[0],
            "paths": paths,
            "crs": record.crs,
            "band_names": list(record.band_names or []),
        }
        if self.ndim == 2:
            meta.update(window=box, transform=list(record.transform) if record.transform else None, affine=None)
        else:
            meta.update(box=box, transform=None, affine=self.volume_reader.affine(record).tolist())
        return meta

    def close(self) -> None:
        """Close this process's open files and drop its cached reads (a notebook's next command starts clean)."""
        if self.raster_reader is not None:
            self.raster_reader.close()
        if self.volume_reader is not None:
            self.volume_reader.close()

    def pairing_note(self) -> str | None:
        """With ``data.date_pairs``: how many files have another date on their grid (a warning text when none)."""
        if not getattr(self.data_cfg, "date_pairs", False) or not getattr(self.view, "pairs", False):
            return None
        paired = sum(1 for m in self.mates if m)
        unplaced = sum(1 for r in self.records if r.kind == "raster" and not r.crs)
        why = (f"; {unplaced} file(s) have no CRS and pair with none (nothing says two of them show one ground)"
               if unplaced else "")
        if not paired:
            one = "there is one file" if len(self.records) == 1 else "no two files share a grid"
            return (f"warning: data.date_pairs is on but {one} (same CRS, transform, size and bands), so every "
                    f"window pairs with itself; check that the dates are aligned on one grid{why}")
        grids = len({grid_key(r) for r, m in zip(self.records, self.mates) if m})
        alone = [r.path for r, m in zip(self.records, self.mates) if not m]
        note = f"date pairs: {paired} of {len(self.records)} files have another date on their grid ({grids} grid(s))"
        if alone:
            note += (f"; alone on their grid, so paired with themselves: {', '.join(map(str, alone[:3]))}"
                     + (f" and {len(alone) - 3} more" if len(alone) > 3 else "") + why)
        if self.ndim == 3:  # a raster's transform places it on Earth; a volume's affine does not name its subject
            note = (f"warning: {note}; volumes registered to one space (an atlas or template, as in BraTS) share one "
                    "affine across subjects, so these pairs may be different subjects: keep data.date_pairs for "
                    "repeat scans of one subject on one grid")
        return note

    def _other_date(self, fi: int, box: list[int], i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The window ``box`` read from another file on record ``fi``'s grid (the first of up to ``REFILES`` of them,
        in an order drawn from ``(seed, i)``, where at least ``data.min_valid_fraction`` of it is valid: not a
        cloud-masked date), normalised, with its valid mask; None without one: the window then pairs with itself."""
        mates, pos = self.mates[fi], box[:self.ndim]
        for j in _rng(self.seed, TAG_MATE, i).permutation(len(mates))[:REFILES]:
            other = self.records[mates[j]]
            read = (self.raster_reader.read_window(other, *pos, *self.window) if self.ndim == 2
                    else self.volume_reader.read_box(other, *pos, *self.window))
            image, valid = normalize(read, self.stats, self._nodata(other))
            if valid.mean() >= self.data_cfg.min_valid_fraction:
                return image, valid
        return None

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of length {self.length}")
        fi, g_rng = self._pick_file(i // self.group)
        image, valid, box = self._draw(self.records[fi], g_rng, i)
        for k in range(REFILES):  # not one valid pixel where the file was tried: another file, never a blank window
            if valid.any():
                break
            rng = _rng(self.seed, TAG_REFILE, i, k)
            fi = min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self.records) - 1)
            image, valid, box = self._draw(self.records[fi], rng, i)
        record = self.records[fi]
        second = self._other_date(fi, box, i)
        if second is not None:
            sample = self.view(image, valid, _rng(self.seed, TAG_VIEW, i), second=second)
        else:
            sample = self.view(image, valid, _rng(self.seed, TAG_VIEW, i))
        sample["meta"] = self._meta(record, box)
        sample["index"] = torch.tensor(i)  # the global sample index: methods draw per-sample randomness from it
        return sample


def _collate(values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(values))
    if isinstance(first, dict):
        return {k: _collate([v[k] for v in values]) for k in first}
    if isinstance(first, (list, tuple)) and all(isinstance(x, torch.Tensor) for x in first):
        return [torch.stack([v[j] for v in values]) for j in range(len(first))]  # per crop index
    return list(values)


class BatchMeta:
    """A batch's per-sample ``meta`` dicts, in order (index, iterate, ``len``, compare with a list).

    Not a ``list``: the DataLoader's pin-memory thread and Lightning's device transfer walk every list and dict of a
    batch, and on a 200-band scene the band names made that ~1,800 objects a batch of 8 (the transfer's walk alone
    2 ms, all under the GIL beside a GPU step of ~30 ms). This class is a leaf to both."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        return self.items[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        return self.items == (other.items if isinstance(other, BatchMeta) else other)

    def __repr__(self) -> str:
        return f"BatchMeta({self.items!r})"


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors stacked, ``views`` dicts stacked per crop index, ``meta`` kept per sample
    (:class:`BatchMeta`)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    return {k: BatchMeta([s[k] for s in samples]) if k == "meta" else _collate([s[k] for s in samples])
            for k in samples[0]}
