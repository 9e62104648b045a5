"""Probe one file for the catalog: header metadata plus a bounded read that estimates validity and value range.

Rasters are never decoded whole when large. Small ones (up to ``SMALL_RASTER_AREA`` pixels) are read whole, chunk by
chunk, and strided to at most ``RASTER_PREVIEW`` px a side. Larger ones use their smallest overview at least
``RASTER_PREVIEW`` px a side when they have overviews, else ``SAMPLE_BLOCKS`` block-aligned chunks spread over the
file (seeded) plus its corners and centre. The full-resolution corners are always read, and the last one is where a
truncated file fails. All reads run with a small GDAL block cache (``GDAL_CACHE_MB``). When the sample shows no valid
pixel, the whole file is read before it is called all-nodata. Volumes are strided to ~``VOLUME_PREVIEW`` voxels a side.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from geomed_ssl.errors import innermost_message
from geomed_ssl.geo.gdal_read import alpha_bands, has_dataset_mask, read_masked
from geomed_ssl.geo.validity import band_gaps, band_percentiles, is_fill, valid_mask, valid_values
from geomed_ssl.geo.voxels import AFFINE_PROBLEM, maps_a_grid, mm_affine, unit_mm

RASTER_PREVIEW = 256  # preview: at most this many pixels per side
VOLUME_PREVIEW = 64  # strided volume read: about this many voxels per side
SMALL_RASTER_AREA = 1024 * 1024  # rasters up to this many pixels are read whole (strided)
SAMPLE_BLOCKS = 16  # chunks drawn (one per cell of a 4x4 split) from a large raster without overviews
SAMPLE_SIDE = 64  # each sampled chunk is strided to about this many pixels a side
SAMPLE_SEED = 0
CHUNK_AREA = 1 << 20  # at most this many pixels per read, unless a single block is larger
GDAL_CACHE_MB = 64  # GDAL block cache during a probe (raised to hold two blocks of all bands)


class ProbeError(Exception):
    """A file that cannot be used; the message is the reason (it becomes a catalog Problem)."""


@dataclass
class FileProbe:
    """What one file's header and preview read say, before band names are resolved.

    ``valid`` is the preview's validity mask: (h, w) on a strided grid of the whole file (``preview`` 'decimated' or
    'overview') or (n,) over the pixels of the sampled chunks ('blocks').
    """

    path: str
    shape: tuple[int, ...]
    num_bands: int
    dtype: str
    nodata: float | None
    descriptions: list[str | None]
    tags: dict[int, dict[str, str]]
    valid: np.ndarray
    value_range: list[list[float]]
    geo: dict[str, Any] = field(default_factory=dict)
    preview: str = "decimated"


def _open_failure(path: str, err: BaseException, kind: str) -> str:
    """Why a file would not open, told apart by its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as os_err:
        return f"cannot be read ({os_err.strerror})"
    fmt = "GeoTIFF" if kind == "raster" else "NIfTI"
    if kind == "raster" and head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return f"corrupt or truncated TIFF ({innermost_message(err)})"
    if kind == "volume" and (head[:2] == b"\x1f\x8b" or head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")):
        return f"corrupt or truncated NIfTI ({innermost_message(err)})"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if head and printable / len(head) > 0.95:
        text = head[:40].decode("ascii", "replace").replace("\n", " ").strip()
        return f"not an image: a text file with an image extension (starts with {text!r}); remove it or exclude it"
    return f"not a readable {fmt}: unrecognised header bytes {head[:8].hex()} (corrupt or wrong extension)"


def _value_range(arr: np.ndarray, valid: np.ndarray, nodata: float | None) -> list[list[float]]:
    """Per band [min, p1, p99, max] of the valid pixels, a band's own gaps left out (NaN for a band without any);
    ``arr`` (C, *S), ``valid`` (*S)."""
    vals = valid_values(arr, valid, band_gaps(arr, nodata))  # (C, n_valid)
    if vals.shape[1] == 0:
        return [[math.nan] * 4 for _ in range(arr.shape[0])]
    p = band_percentiles(vals, [1, 99])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-gap band: NaN
        low, high = np.nanmin(vals, axis=1), np.nanmax(vals, axis=1)
    return [[round(float(v), 6) for v in row] for row in zip(low, p[0], p[1], high)]


def _nodata(cfg_nodata: float | None, file_nodata: float | None) -> float | None:
    value = cfg_nodata if cfg_nodata is not None else file_nodata
    return None if value is None or not math.isfinite(float(value)) else float(value)


def under_half(shape: Sequence[int], window: Sequence[int]) -> bool:
    """A side of ``shape`` is under half of ``window``'s: padding would fill most of a window there."""
    return any(2 * s < w for s, w in zip(shape, window))


def _check_size(shape: tuple[int, ...], window: tuple[int, ...]) -> None:
    if under_half(shape, window):
        raise ProbeError(f"is {'x'.join(map(str, shape))}, smaller than half the {'x'.join(map(str, window))} "
                         "window (data.patch_size; embed's --window); lower it or exclude the file")


# -- raster reads -----------------------------------------------------------------------------------------------
def _chunk_shape(block: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    """The read unit: whole blocks adding up to ~RASTER_PREVIEW px a side (at most CHUNK_AREA pixels, so thin strips
    give fewer rows), capped at the file; a block over CHUNK_AREA (one strip per image) is cut into 512-px pieces."""
    (bh, bw), (H, W) = block, shape
    if bh * bw > CHUNK_AREA:
        return min(H, 2 * RASTER_PREVIEW), min(W, 2 * RASTER_PREVIEW)
    h, w = min(H, -(-RASTER_PREVIEW // bh) * bh), min(W, -(-RASTER_PREVIEW // bw) * bw)
    if h * w > CHUNK_AREA:
        h = min(H, max(bh, CHUNK_AREA // w // bh * bh))
    return h, w


def _chunk_window(cell: tuple[int, int], chunk: tuple[int, int], shape: tuple[int, int]) -> tuple[int, ...]:
    """(row, col, h, w) of chunk ``cell`` of the chunk grid, clipped to the file."""
    r, c = cell[0] * chunk[0], cell[1] * chunk[1]
    return r, c, min(chunk[0], shape[0] - r), min(chunk[1], shape[1] - c)


def _read(src: Any, win: tuple[int, ...]) -> np.ndarray:
    from rasterio.windows import Window

    return read_masked(src, Window(win[1], win[0], win[3], win[2]))  # (C, h, w); GDAL mask -> NaN


def sample_windows(shape: tuple[int, int], block: tuple[int, int], n_random: int = SAMPLE_BLOCKS,
                   seed: int = SAMPLE_SEED, corners: bool = True) -> list[tuple[int, ...]]:
    """Chunk windows (row, col, h, w) of a large raster: the four corners (bottom-right last of them, the end of a
    truncated file; left out without ``corners``: where a nodata collar lies, four of 21 chunks would count it
    for a fifth of the file), the centre, and one seeded chunk in each cell of a 4x4 split of the chunk grid
    (``n_random`` cells at most), without repeats."""
    chunk = _chunk_shape(block, shape)
    ny, nx = -(-shape[0] // chunk[0]), -(-shape[1] // chunk[1])
    cells = [(0, 0), (0, nx - 1), (ny - 1, 0), (ny - 1, nx - 1)] if corners else []
    cells.append((ny // 2, nx // 2))
    rng = np.random.default_rng(seed)
    side = math.isqrt(n_random) if n_random > 0 else 0
    if side:
        for rows in np.array_split(np.arange(ny), min(side, ny)):
            for cols in np.array_split(np.arange(nx), min(side, nx)):
                cells.append((int(rng.choice(rows)), int(rng.choice(cols))))
    return [_chunk_window(c, chunk, shape) for c in dict.fromkeys(cells)]


def _read_strided(src: Any, stride: int) -> np.ndarray:
    """The whole dataset strided like ``read()[:, ::stride, ::stride]``, read chunk by chunk so every block is decoded
    once and memory stays bounded: (C, ceil(H / stride), ceil(W / stride))."""
    shape = (src.height, src.width)
    chunk = _chunk_shape(tuple(int(v) for v in src.block_shapes[0]), shape)
    dtype = np.float32 if has_dataset_mask(src) else np.result_type(*src.dtypes)  # masked pixels are NaN
    out = np.empty((src.count, -(-shape[0] // stride), -(-shape[1] // stride)), dtype)
    for i in range(-(-shape[0] // chunk[0])):
        for j in range(-(-shape[1] // chunk[1])):
            r, c, h, w = _chunk_window((i, j), chunk, shape)
            r0, c0 = -r % stride, -c % stride  # first kept row / col inside this chunk
            if r0 >= h or c0 >= w:
                continue
            part = _read(src, (r + r0, c + c0, h - r0, w - c0))[:, ::stride, ::stride]  # (C, h', w')
            out[:, (r + r0) // stride:(r + r0) // stride + part.shape[1],
                (c + c0) // stride:(c + c0) // stride + part.shape[2]] = part
    return out


def _read_samples(src: Any, windows: list[tuple[int, ...]]) -> np.ndarray:
    """The chosen windows, each strided to ~SAMPLE_SIDE px a side, as pixels (C, n)."""
    parts = []
    for win in windows:
        stride = max(1, math.ceil(math.sqrt(win[2] * win[3]) / SAMPLE_SIDE))
        parts.append(_read(src, win)[:, ::stride, ::stride].reshape(src.count, -1))  # (C, n_i)
    return np.concatenate(parts, axis=1)


def _overview_level(src: Any) -> int | None:
    """Index of the smallest overview at least RASTER_PREVIEW px a side (else the largest one) of at most
    SMALL_RASTER_AREA pixels; None without a usable overview."""
    factors = src.overviews(1)
    sizes = [(-(-src.height // f), -(-src.width // f)) for f in factors]
    small = [i for i, (h, w) in enumerate(sizes) if h * w <= SMALL_RASTER_AREA]
    if not small:
        return None
    big = [i for i in small if min(sizes[i]) >= RASTER_PREVIEW]
    return max(big, key=lambda i: factors[i]) if big else min(small, key=lambda i: factors[i])


def _cache_bytes(src: Any) -> int:
    """GDAL block cache for a probe, in bytes (what rasterio's GDAL_CACHEMAX takes): 64 MB, or two blocks."""
    bh, bw = src.block_shapes[0]
    block_bytes = bh * bw * sum(np.dtype(d).itemsize for d in src.dtypes)
    return max(GDAL_CACHE_MB * 2**20, 2 * block_bytes)


def _raster_preview(path: str, src: Any, nodata: float | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(pixels (C, *S), valid (*S), how): the bounded preview read of an open raster (see the module docstring)."""
    import rasterio

    shape, block = (src.height, src.width), tuple(int(v) for v in src.block_shapes[0])
    whole_stride = max(1, math.ceil(max(shape) / RASTER_PREVIEW))
    if shape[0] * shape[1] <= SMALL_RASTER_AREA:
        arr, how = _read_strided(src, whole_stride), "decimated"
    else:
        level = _overview_level(src)
        if level is not None:
            _read_samples(src, sample_windows(shape, block, n_random=0))  # full-resolution integrity check
            with rasterio.open(path, overview_level=level) as ovr:
                arr = _read_strided(ovr, max(1, math.ceil(max(ovr.height, ovr.width) / RASTER_PREVIEW)))
            how = "overview"
        else:
            windows = sample_windows(shape, block, corners=False)  # the file as it is, its collar no more
            for end in (w for w in sample_windows(shape, block, n_random=0) if w not in windows):
                _read(src, end)  # the corners: where a truncated file fails
            arr, how = _read_samples(src, windows), "blocks"
        if not valid_mask(arr, nodata).any():  # a small patch of data the sample missed: look everywhere
            arr, how = _read_strided(src, whole_stride), "decimated"
    return arr, valid_mask(arr, nodata), how


def _value_scaling(src: Any) -> list[list[float]] | None:
    """The bands' [scales, offsets] tags when any differs from 1 / 0 (values are read as stored), else None."""
    scales, offsets = [float(v) for v in src.scales], [float(v) for v in src.offsets]
    return None if all(v == 1 for v in scales) and all(v == 0 for v in offsets) else [scales, offsets]


def _probe_raster(path: str, data_cfg: Any, window: tuple[int, ...]) -> FileProbe:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(path)
        except Exception as err:
            raise ProbeError(_open_failure(path, err, "raster")) from None
        with src:
            shape, count = (src.height, src.width), src.count
            if count < 1:
                raise ProbeError("has no bands")
            _check_complex(next((d for d in src.dtypes if d.startswith("complex")), src.dtypes[0]))
            if count == 1 and src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "1":
                raise ProbeError("holds 1-bit values (a mask or binary map; GDAL gives such files a palette): give "
                                 "it as --labels if it labels the images, else leave it out (data.exclude)")
            if count == 1 and src.colorinterp[0].name == "palette":
                raise ProbeError("holds palette indices, not intensities (a colour-mapped image): expand it to RGB "
                                 "bands first (gdal_translate -expand rgb IN OUT), or give it as --labels if it is a "
                                 "label map")
            _check_size(shape, window)
            nodata = _nodata(data_cfg.nodata, src.nodata)
            tags = {b: {**src.tags(b), **src.tags(b, ns="IMAGERY")} for b in range(1, count + 1)}
            try:
                with rasterio.Env(GDAL_CACHEMAX=_cache_bytes(src)):
                    arr, valid, how = _raster_preview(path, src, nodata)
            except Exception as err:
                raise ProbeError(f"truncated or corrupt pixel data ({innermost_message(err)})") from None
            geo = {"crs": src.crs.to_wkt() if src.crs else None,
                   "transform": [float(v) for v in list(src.transform)[:6]],
                   "block_shape": tuple(int(v) for v in src.block_shapes[0]),
                   "value_scaling": _value_scaling(src), "alpha_bands": alpha_bands(src)}
            own = src.nodata
            if nodata is not None and own is not None and math.isfinite(own) and own != nodata \
                    and bool(is_fill(arr, own).all(axis=0).any()):  # data.nodata replaces a fill the file holds
                geo["replaced_nodata"] = float(own)
            dtype = str(np.result_type(*src.dtypes))
            _check_empty_bands(arr, valid, list(src.descriptions))
            return FileProbe(path, shape, count, dtype, nodata, list(src.descriptions), tags, valid,
                          _value_range(arr, valid, nodata), geo, how)


def _check_complex(dtype: str) -> None:
    """A ProbeError for complex values (SAR single-look complex, MR phase data): read as they are, only their real
    part would reach the encoder."""
    if dtype.startswith("complex") or np.dtype(dtype).kind == "c":  # GDAL's complex_int16 is no numpy type
        raise ProbeError(f"holds complex values ({dtype}), of which only the real part could be read; convert it to "
                         "amplitude or intensity (or to real and imaginary bands) first, e.g. with numpy or "
                         "gdal_calc.py / nibabel, and point the command at the converted files")


def _check_empty_bands(arr: np.ndarray, valid: np.ndarray, descriptions: list[str | None]) -> None:
    """A ProbeError naming the bands without a finite value when they alone leave the file with no valid pixel (a
    pixel needs every band: one all-NaN band makes the whole file nodata, whatever the others hold)."""
    if arr.shape[0] < 2 or valid.any() or not np.isfinite(arr).any():
        return
    empty = [i for i in range(arr.shape[0]) if not np.isfinite(arr[i]).any()]
    if empty:
        names = ", ".join(descriptions[i] or f"band {i + 1}" for i in empty[:4])
        raise ProbeError(f"{names} hold{'s' if len(empty) == 1 else ''} no finite value (NaN throughout), and a pixel "
                         "needs every band, so the file has no valid pixel; drop that band (data.band_names / another "
                         "export) or leave the file out (data.exclude)")


def reordered(orientation: str, values: Sequence[Any], axcodes: str = "RAS") -> tuple[Any, ...]:
    """Per-axis ``values`` of a volume whose file axes point to ``orientation`` (nibabel's axis codes, e.g. "LPS"),
    in ``axcodes`` order (the volume reader's RAS)."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    ornt = ornt_transform(axcodes2ornt(tuple(orientation)), axcodes2ornt(tuple(axcodes)))
    out: list[Any] = [0] * len(values)
    for src_axis, (dst_axis, _) in enumerate(ornt):
        out[int(dst_axis)] = values[src_axis]
    return tuple(out)


def read_shape(spatial: tuple[int, ...], affine: np.ndarray, spacing: Any) -> tuple[int, ...]:
    """The (x, y, z) shape the volume reader gives a file of ``spatial`` voxels: reoriented to RAS and, with
    ``data.spacing`` (mm, RAS order), resampled to it (the windows' size is counted on that grid)."""
    import nibabel as nib

    codes = "".join(nib.aff2axcodes(affine))
    shape = [int(n) for n in reordered(codes, spatial)]
    if spacing is None:
        return tuple(shape)
    from geomed_ssl.geo.voxels import resampled_shape, voxel_mm

    mm = reordered(codes, [float(v) for v in voxel_mm(affine)])
    return tuple(resampled_shape(shape, mm, [float(t) for t in spacing]))


def _probe_volume(path: str, data_cfg: Any, window: tuple[int, ...]) -> FileProbe:
    import nibabel as nib

    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
    except Exception as err:
        raise ProbeError(_open_failure(path, err, "volume")) from None
    if len(shape) < 3 or len(shape) > 4:
        raise ProbeError(f"has {len(shape)} dimensions {list(shape)}; volumes need 3 spatial axes "
                         "(+ channels as a 4th)")
    spatial, count = shape[:3], (shape[3] if len(shape) == 4 else 1)
    if count < 1:
        raise ProbeError("has an empty channel axis")
    _check_complex(str(img.get_data_dtype()))
    affine = mm_affine(img)
    if not maps_a_grid(affine):  # in mm: 20-um voxels in metres are a determinant of 8e-15
        raise ProbeError(f"{AFFINE_PROBLEM}, or leave the file out with data.exclude")
    _check_size(read_shape(spatial, affine, getattr(data_cfg, "spacing", None)), window)
    steps = tuple(max(1, math.ceil(s / VOLUME_PREVIEW)) for s in spatial)
    try:
        arr = np.asarray(img.dataobj[tuple(slice(None, None, s) for s in steps)])
    except Exception as err:
        raise ProbeError(f"truncated or corrupt voxel data ({innermost_message(err)})") from None
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)  # (C, x, y, z)
    nodata = _nodata(data_cfg.nodata, None)
    valid = valid_mask(arr, nodata)
    geo = {"affine": affine.tolist(), "spacing": [float(z) * unit_mm(img) for z in img.header.get_zooms()[:3]],
           "orientation": "".join(str(c) for c in nib.aff2axcodes(affine))}
    return FileProbe(path, spatial, count, str(arr.dtype), nodata, [None] * count, {}, valid,
                  _value_range(arr, valid, nodata), geo, "strided")


def probe_file(path: str, kind: str, data_cfg: Any, window: tuple[int, ...]) -> FileProbe:
    """Header and preview of one raster / volume file; raises ``ProbeError`` with the reason it cannot be used."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise ProbeError(f"cannot be read ({err.strerror})") from None
    if size == 0:
        raise ProbeError("empty file (0 bytes)")
    return (_probe_raster if kind == "raster" else _probe_volume)(path, data_cfg, window)

