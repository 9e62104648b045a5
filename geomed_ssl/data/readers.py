"""Windowed GeoTIFF reads and decoded-volume reads, with small bounded per-process caches.

Random small windows from a compressed tiled GeoTIFF are slow (every window decodes whole tiles), so the raster
reader reads one block-aligned *region* (a few tiles) once, keeps it in a byte-bounded LRU, and cuts many windows
from it. Volumes (NIfTI, usually gzipped) are decoded once, reoriented to RAS, optionally resampled, intensity
preprocessed and kept in a count-bounded LRU.

All reads return float32; pixels outside the file are NaN so that normalisation marks them invalid.
Caches are keyed by process id: a reader copied into a forked DataLoader worker starts empty there.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from geomed_ssl.bands.conform import pick_bands
from geomed_ssl.data.intensity import intensity_args, preprocess_intensity
from geomed_ssl.geo.validity import valid_mask
from geomed_ssl.windows.crops import pad_crop
from geomed_ssl.geo.gdal_read import read_masked
from geomed_ssl.geo.voxels import mm_affine, resample_to_spacing
from geomed_ssl.errors import DataError, innermost_message

Region = tuple[int, int, int, int]  # row_off, col_off, height, width (file pixels, inside the file)

# GDAL's own block cache duplicates our region cache; keep it small (MB).
GDAL_CACHE_MB = 64
# rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64, which takes bytes (a bare 64 would be a 64-byte cache).
GDAL_CACHE_BYTES = GDAL_CACHE_MB * 2**20


def _paths(record: Any) -> list[str]:
    return list(record.paths) if getattr(record, "paths", None) else [record.path]


def _key(record: Any) -> tuple:
    """Cache key of a record's data: its files and the bands read from them (``FileRecord.band_index``)."""
    index = getattr(record, "band_index", None)
    return tuple(_paths(record)), None if index is None else tuple(index)


class _LRU:
    """An ordered dict bounded by item count and/or total ``nbytes``; evicts least recently used."""

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None, on_evict=None):
        self.max_items, self.max_bytes, self.on_evict = max_items, max_bytes, on_evict
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.nbytes = 0

    def get(self, key: Any) -> Any:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if key in self.items:
            self._drop(key)
        self.items[key] = value
        self.nbytes += int(getattr(value, "nbytes", 0))
        while len(self.items) > 1 and (
            (self.max_items is not None and len(self.items) > self.max_items)
            or (self.max_bytes is not None and self.nbytes > self.max_bytes)
        ):
            self._drop(next(iter(self.items)))

    def _drop(self, key: Any) -> None:
        value = self.items.pop(key)
        self.nbytes -= int(getattr(value, "nbytes", 0))
        if self.on_evict is not None:
            self.on_evict(value)

    def clear(self) -> None:
        for key in list(self.items):
            self._drop(key)

    def __len__(self) -> int:
        return len(self.items)


def _close(ds: Any) -> None:
    try:
        ds.close()
    except Exception:  # a handle inherited through fork may already be unusable
        pass


class RasterReader:
    """Windowed GeoTIFF reads with a per-process LRU of open handles and of block-aligned regions.

    ``max_open`` bounds open datasets, ``cache_bytes`` the decoded regions kept (float32 not stored: regions keep
    the file dtype). ``min_region`` is the smallest region side in pixels (rounded up to whole blocks).
    """

    def __init__(self, max_open: int = 16, cache_bytes: int = 128 * 2**20, min_region: int = 256):
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self.max_open, self.cache_bytes, self.min_region = max_open, cache_bytes, min_region
        self._pid: int | None = None
        self._handles = self._regions = None  # type: ignore[assignment]
        self._env = self._sidecar_env = None
        self.counters = {"region_reads": 0, "region_hits": 0, "direct_reads": 0}

    # -- per-process state ------------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        # Handles and caches never travel to another process (spawned DataLoader workers start empty).
        return {**self.__dict__, "_pid": None, "_handles": None, "_regions": None, "_env": None,
                "_sidecar_env": None}

    def _check_pid(self) -> None:
        pid = os.getpid()
        if self._pid != pid:  # new process (first use, or forked worker): never reuse the parent's handles
            self._pid = pid
            self._handles = _LRU(max_items=self.max_open, on_evict=_close)
            self._regions = _LRU(max_bytes=self.cache_bytes)
            import rasterio

            self._env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
            self._sidecar_env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)

    def handle(self, path: str) -> Any:
        """An open rasterio dataset for ``path`` (opened at most once per process while cached)."""
        self._check_pid()
        ds = self._handles.get(path)
        if ds is None:
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            try:
                # not listing the folder on every open (thousands of files) hides a mask sidecar: look for it
                # (GDAL takes NAME.msk, or NAME.MSK beside an upper-case NAME such as S.TIF)
                sidecar = any(os.path.exists(path + ext) for ext in (".msk", ".MSK"))
                env = self._sidecar_env if sidecar else self._env
                with env, warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain TIFFs are fine to train on
                    ds = rasterio.open(path)
            except Exception as err:
                raise DataError(
                    f"cannot open raster '{path}': {err}. Check the file exists and is a GeoTIFF."
                ) from None
            self._handles.put(path, ds)
        return ds

    @property
    def open_handles(self) -> int:
        return 0 if self._handles is None or self._pid != os.getpid() else len(self._handles)

    @property
    def cached_region_bytes(self) -> int:
        return 0 if self._regions is None or self._pid != os.getpid() else self._regions.nbytes

    def close(self) -> None:
        """Close handles and drop cached regions of this process."""
        if self._pid == os.getpid() and self._handles is not None:
            self._handles.clear()
            self._regions.clear()

    # -- geometry ---------------------------------------------------------------------------------------------
    def _axes(self, record: Any, window: tuple[int, int]) -> list[tuple[int, int, int]]:
        """Per axis (rows, cols): region size, run length and number of runs.

        The window starts along an axis, 0 to n - window, are cut into runs of ``step`` (a whole number of blocks
        holding at least ``min_region`` - window + 1 starts; axes whose block is much larger, strips spanning a wide
        file, in pixels), and a run's region is the run plus the window. So every start lies in exactly one run,
        a start drawn uniformly picks run and region (:meth:`draw_region`: every window position equally likely,
        block seams included), and neighbouring regions overlap by window - 1 pixels. Regions grow to twice
        ``min_region`` where such a region, stored as float32 (a masked file's are), takes at most a quarter of the
        cache: runs of two blocks share the seam's extra decoding (2,060 windows/s against 1,773 on 13-band
        256-px tiles).
        """
        axes = self._axes_of(record, window, self.min_region)
        grown = self._axes_of(record, window, 2 * self.min_region)
        bands = max(1, int(record.num_bands))
        return grown if grown[0][0] * grown[1][0] * bands * 4 <= self.cache_bytes / 4 else axes

    @staticmethod
    def _axes_of(record: Any, window: tuple[int, int], min_region: int) -> list[tuple[int, int, int]]:
        out = []
        for n, b, win in zip(record.shape[-2:], record.block_shape or (1, 1), window):
            n, win, side = int(n), int(win), max(int(win), min_region)
            want = side - win + 1
            step = int(math.ceil(want / b)) * int(b) if b <= 2 * side else want
            out.append((min(step + win - 1, n), step, int(math.ceil(max(1, n - win + 1) / step))))
        return out

    def region_at(self, record: Any, window: tuple[int, int], index: tuple[int, int]) -> Region:
        """The region of run ``index``; the last one along an axis is shifted back to end at the file edge."""
        return self._region(record, self._axes(record, window), index)

    @staticmethod
    def _region(record: Any, axes: list[tuple[int, int, int]], index: Sequence[int]) -> Region:
        (sr, tr, _), (sc, tc, _) = axes
        H, W = record.shape[-2:]
        return max(0, min(index[0] * tr, H - sr)), max(0, min(index[1] * tc, W - sc)), sr, sc

    def draw_region(self, record: Any, window: tuple[int, int],
                    rng: np.random.Generator) -> tuple[Region, list[tuple[int, int]]]:
        """A region drawn with the odds of a uniformly placed window, and per axis the first and last window start
        (inclusive) of its run; along an axis where the file is smaller than the window, the starts that keep the
        file inside the window (the rest is padding)."""
        axes, index, starts = self._axes(record, window), [], []
        for (_, step, runs), n, win in zip(axes, record.shape[-2:], window):
            if n <= win:
                index.append(0)
                starts.append((int(n) - int(win), 0))
                continue
            k = min(int(rng.integers(int(n) - int(win) + 1)) // step, runs - 1)
            index.append(k)
            starts.append((k * step, min(k * step + step - 1, int(n) - int(win))))
        return self._region(record, axes, index), starts

    # -- reads ------------------------------------------------------------------------------------------------
    def _read_clipped(self, record: Any, row: int, col: int, h: int, w: int) -> np.ndarray:
        """Read the in-file window (no padding) from every path and stack channels: (C, h, w) file dtype, the bands
        ``record.band_index`` picks (all when None)."""
        from rasterio.windows import Window

        parts = []
        paths = _paths(record)
        stacked = len(paths) > 1  # each file's missing pixels its own (data.nodata, else its tag)
        for path in paths:
            ds = self.handle(path)
            if (ds.height, ds.width) != tuple(record.shape[-2:]):
                raise DataError(
                    f"raster '{path}' is {ds.height}x{ds.width} but its catalog record says {record.shape}; "
                    "rescan the folder (the file changed) or stack only files of equal size."
                )
            try:
                with self._env:
                    parts.append(read_masked(ds, Window(col, row, w, h), record.nodata, stacked=stacked))
            except Exception as err:
                raise DataError(f"cannot read window {[row, col, h, w]} (row, col, height, width) of '{path}' "
                                f"({innermost_message(err).rstrip('.')}). "
                                "Part of its pixel data is corrupt (the scan checks only a sample of each file): "
                                "replace the file, or leave it out with --set \"data.exclude=[...]\" (a "
                                "resumed run continues without it).") from None
        return pick_bands(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0), record)

    def read_region(self, record: Any, region: Region) -> np.ndarray:
        """The region (C, h, w) in the file dtype, from the cache or read once. Treat it as read-only."""
        self._check_pid()
        key = (_key(record), tuple(int(v) for v in region))
        arr = self._regions.get(key)
        if arr is None:
            r, c, h, w = key[1]
            if r < 0 or c < 0 or r + h > record.shape[-2] or c + w > record.shape[-1]:
                raise ValueError(f"region {list(region)} is outside raster of shape {record.shape}")
            arr = self._read_clipped(record, r, c, h, w)
            arr.setflags(write=False)
            self._regions.put(key, arr)
            self.counters["region_reads"] += 1
        else:
            self.counters["region_hits"] += 1
        return arr

    def read_window(
        self, record: Any, row: int, col: int, h: int, w: int, region: Region | None = None
    ) -> np.ndarray:
        """Window (C, h, w) float32 at file pixel ``(row, col)``; outside the file is NaN (boundless).

        With ``region`` (which must contain the in-file part of the window) the pixels are cut from the cached
        region; without it the in-file part is read directly (no caching).
        """
        H, W = record.shape[-2:]
        r0, c0, r1, c1 = max(row, 0), max(col, 0), min(row + h, H), min(col + w, W)
        out = np.full((record.num_bands, h, w), np.nan, dtype=np.float32)  # (C, h, w)
        if r1 <= r0 or c1 <= c0:
            return out
        if region is not None:
            rr, rc, rh, rw = region
            if r0 < rr or c0 < rc or r1 > rr + rh or c1 > rc + rw:
                raise ValueError(f"window {[row, col, h, w]} is not inside region {list(region)}")
            src = self.read_region(record, region)[:, r0 - rr : r1 - rr, c0 - rc : c1 - rc]
        else:
            src = self._read_clipped(record, r0, c0, r1 - r0, c1 - c0)
            self.counters["direct_reads"] += 1
        if src.shape[0] != record.num_bands:
            raise DataError(
                f"raster '{record.path}' gave {src.shape[0]} bands but its catalog record says {record.num_bands}; "
                "rescan the folder."
            )
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = src
        return out


class VolumeReader:
    """Decoded NIfTI volumes: RAS orientation, optional resampling to ``data_cfg.spacing``, intensity
    preprocessing (``intensity.preprocess_intensity``), kept in a per-process LRU of ``max_cached`` volumes."""

    def __init__(self, data_cfg: Any, max_cached: int | None = None):
        self.data_cfg = data_cfg
        self.max_cached = max(1, int(max_cached if max_cached is not None else data_cfg.cache_volumes))
        self._pid: int | None = None
        self._cache: _LRU | None = None
        self.counters = {"loads": 0, "hits": 0}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": None, "_cache": None}

    def _lru(self) -> _LRU:
        if self._pid != os.getpid():
            self._pid, self._cache = os.getpid(), _LRU(max_items=self.max_cached)
        return self._cache  # type: ignore[return-value]

    @property
    def cached_volumes(self) -> int:
        return 0 if self._cache is None or self._pid != os.getpid() else len(self._cache)

    def close(self) -> None:
        """Drop this process's decoded volumes (their memory; NIfTI files are not held open)."""
        if self._pid == os.getpid() and self._cache is not None:
            self._cache.clear()

    def _load_one(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(C, I, J, K) float32 in RAS orientation (resampled if asked) and its 4x4 affine.

        nibabel's closest-canonical reorientation (the same voxels as MONAI's ``Orientation("RAS")``) without
        MONAI's ~10 s import in every worker and CLI start.
        """
        import nibabel as nib

        try:
            img = nib.as_closest_canonical(nib.load(path))
            arr = np.asarray(img.get_fdata(dtype=np.float32))
        except Exception as err:
            raise DataError(
                f"cannot read volume '{path}': {err}. Check it is a NIfTI (.nii / .nii.gz) file."
            ) from None
        if arr.ndim not in (3, 4):
            raise DataError(f"volume '{path}' has shape {list(arr.shape)}; expected 3 spatial axes (+ channels).")
        arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)  # (C, D, H, W)
        affine = mm_affine(img)
        if self.data_cfg.spacing is not None:
            nodata = self.data_cfg.nodata
            if nodata is not None and not np.isnan(nodata):  # as NaN, so interpolation never blends it into data
                arr = arr.astype(np.float32)  # a copy: the file's array may be read-only
                arr[arr == np.float32(nodata)] = np.nan
            arr, affine = resample_to_spacing(arr, affine, [float(v) for v in self.data_cfg.spacing])
        return arr, affine

    def load(self, record: Any) -> tuple[np.ndarray, np.ndarray]:
        """The whole preprocessed volume (C, D, H, W) float32 and its RAS affine (cached; treat as read-only)."""
        cache = self._lru()
        key = _key(record)
        hit = cache.get(key)
        if hit is not None:
            self.counters["hits"] += 1
            return hit.array, hit.affine
        parts, affine = [], None
        for path in key[0]:
            arr, aff = self._load_one(path)
            if parts and arr.shape[1:] != parts[0].shape[1:]:
                raise DataError(
                    f"volume '{path}' has shape {list(arr.shape[1:])} but '{key[0][0]}' has "
                    f"{list(parts[0].shape[1:])}; "
                    "channels stacked together must share one voxel grid."
                )
            parts.append(arr)
            affine = aff if affine is None else affine
        vol = pick_bands(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0), record)  # (C, D, H, W)
        # The same CT/MR decision and MR percentiles as compute_stats, so the statistics match these intensities.
        vol = preprocess_intensity(vol, self.data_cfg, **intensity_args(record, self.data_cfg))
        vol = np.ascontiguousarray(vol, dtype=np.float32)
        vol.setflags(write=False)
        cache.put(key, _Volume(vol, affine))
        self.counters["loads"] += 1
        return vol, affine  # type: ignore[return-value]

    def volume_shape(self, record: Any) -> tuple[int, int, int]:
        """Spatial shape (I, J, K) along the RAS axes (i towards Right, j Anterior, k Superior) after reorientation
        and resampling."""
        return tuple(self.load(record)[0].shape[1:])  # type: ignore[return-value]

    def affine(self, record: Any) -> np.ndarray:
        """The 4x4 RAS voxel-to-world affine after resampling."""
        return self.load(record)[1]

    def read_box(self, record: Any, i: int, j: int, k: int, di: int, dj: int, dk: int) -> np.ndarray:
        """Box (C, di, dj, dk) float32 at RAS voxel ``(i, j, k)`` (i towards Right, j Anterior, k Superior); outside
        the volume is NaN."""
        vol, _ = self.load(record)
        return pad_crop(vol, (i, j, k), (di, dj, dk), np.nan, np.float32)


class _Volume:
    """A cached volume and its affine; ``nbytes`` lets the LRU count it."""

    def __init__(self, array: np.ndarray, affine: np.ndarray):
        self.array, self.affine, self.nbytes = array, affine, array.nbytes


def valid_map(record: Any, data_cfg: Any, labelled: np.ndarray, rows_per_read: int = 256) -> np.ndarray | None:
    """Where the image of ``record`` has data, as training and prediction see it (``validity.valid_mask`` on the
    readers' output: every band of the file finite, GDAL masks and a stack's own nodata included, not all bands at
    nodata), on the grid of the bool map ``labelled``; None when nothing can be invalid. Only raster strips holding a
    labelled pixel are read (whole tiles: ``rows_per_read`` is rounded to the tile height); elsewhere True."""
    from geomed_ssl.geo.gdal_read import has_dataset_mask

    nodata = data_cfg.nodata if data_cfg.nodata is not None else record.nodata
    shape = tuple(labelled.shape)
    if len(shape) == 3:
        if nodata is None and np.dtype(record.dtype).kind in "iub":
            return None
        valid = valid_mask(VolumeReader(data_cfg, max_cached=1).load(record)[0], nodata)
    else:
        reader = RasterReader(max_open=1)
        if (nodata is None and np.dtype(record.dtype).kind in "iub" and len(record.paths) == 1
                and not has_dataset_mask(reader.handle(record.paths[0]))):
            return None
        (h, w), tile = shape, (record.block_shape or (rows_per_read, 0))[0]
        step = max(1, rows_per_read // tile) * tile
        valid = np.ones(shape, bool)
        for r in range(0, h, step):
            if labelled[r:r + step].any():
                valid[r:r + step] = valid_mask(reader.read_window(record, r, 0, min(step, h - r), w), nodata)
    if valid.shape != shape:
        raise DataError(f"'{record.path}' reads as {list(valid.shape)} pixels but its labels are {list(shape)}; "
                        "they must share one grid.")
    return valid
