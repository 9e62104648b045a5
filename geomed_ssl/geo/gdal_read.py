"""Raster reads that keep what GDAL says is missing: a per-dataset mask (an internal mask band or a ``.msk``
sidecar, as GDAL writes for JPEG-compressed or clipped scenes) and, in a stack of single-band files, the further
files' own nodata values (the first file's, or ``data.nodata``, is the record's). The readers, the statistics, the
catalog's probe and ``predict`` read through :func:`read_masked`, so such pixels are NaN (invalid) everywhere."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

WHOLE_RASTER_BYTES = 1 << 30  # a raster up to this size as read is read once when windows would read it over


def _gdal_mask(ds: Any) -> bool:
    """Whether GDAL gives ``ds`` a per-dataset mask (internal, sidecar, or an alpha band in the layouts GDAL reads
    as one: 2 or 4 bands of Byte / UInt16)."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.per_dataset in flags for flags in ds.mask_flag_enums)


def has_dataset_mask(ds: Any) -> bool:
    """Whether the open rasterio dataset ``ds`` carries a per-dataset mask: GDAL's (internal, sidecar, alpha band)
    or an alpha band GDAL does not read as one (float RGBA, a 6-band mosaic with alpha), which reads mask too."""
    return _gdal_mask(ds) or bool(alpha_bands(ds))


def alpha_bands(ds: Any) -> list[int]:
    """0-based indices of ``ds``'s alpha bands (colour interpretation alpha, e.g. an RGBA orthophoto's 4th band):
    GDAL reads them as the per-dataset mask, so they are a mask, not a band to learn from; none when every band
    is alpha (nothing else to read)."""
    from rasterio.enums import ColorInterp

    alpha = [i for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
    return [] if len(alpha) == ds.count else alpha


def data_bands(sources: Any) -> list[int]:
    """Positions, in the stack of ``sources`` (open datasets, band after band), of every band but the alpha
    bands."""
    keep, offset = [], 0
    for ds in sources:
        alpha = set(alpha_bands(ds))
        keep += [offset + i for i in range(ds.count) if i not in alpha]
        offset += ds.count
    return keep


def read_masked(ds: Any, window: Any = None, nodata: float | None = None, stacked: bool = False) -> np.ndarray:
    """``ds.read(window=window)`` (C, h, w) as stored, except where ``ds`` says pixels are missing beyond
    ``nodata`` (the value the caller treats as nodata: the file's, or ``data.nodata``, which overrides a file's
    tag): pixels its per-dataset mask or its alpha band (at 0) hides and, for a file of a stack (``stacked``: each
    file its own band), pixels equal to ``nodata`` when given (NaN included: missing already), else to the file's
    own tag, come back NaN (the array then float32), so a pixel any channel file misses is missing."""
    arr = ds.read(window=window)
    masked = _gdal_mask(ds)
    alpha = [] if masked else alpha_bands(ds)  # an alpha band GDAL does not read as the mask: zero is missing
    own = (nodata if nodata is not None else ds.nodata) if stacked else None
    if own is not None and math.isnan(own):
        own = None  # NaN is missing already
    if not masked and not alpha and own is None:
        return arr
    out = arr.astype(np.float32)
    if masked:
        out[ds.read_masks(window=window) == 0] = np.nan
    if alpha:
        out[:, (arr[alpha] == 0).any(axis=0)] = np.nan
    if own is not None:
        out[arr == own] = np.nan
    return out


def window_reads(ds: Any, nodata: float | None = None, stacked: bool = False, windows: int = 0,
                 size: tuple[int, int] = (0, 0), together: int = 1) -> Callable[[Any], np.ndarray]:
    """A reader of windows of ``ds`` (a rasterio ``Window`` -> what :func:`read_masked` gives for it). When
    ``windows`` windows of ``size`` (rows, columns) would decode more pixels than the raster holds, it is read once,
    whole, if it fits in its share of ``WHOLE_RASTER_BYTES`` (one of ``together`` files held at once: a stack's) as
    read (float32 where masks turn pixels into NaN, with the stored array and the mask beside it), and its windows
    are cut from that: the same values at a fraction of the reading. A window decodes every block it touches: on
    average its side plus a block side less one along each axis, a whole row of a striped raster (each block spans
    its width, as most hyperspectral cubes are written); 40-px windows of a 400-band cube in 256-px tiles decoded the
    file some 35 times over for 256 windows."""
    blocks = set(ds.block_shapes)
    bh, bw = blocks.pop() if len(blocks) == 1 else (1, ds.width)  # bands blocked unlike each other: as if striped
    rows, cols = (min(s + b - 1, n) for s, b, n in zip(size, (bh, bw), (ds.height, ds.width)))
    decoded = windows * rows * cols
    itemsize = max(np.dtype(d).itemsize for d in ds.dtypes)
    converted = _gdal_mask(ds) or alpha_bands(ds) or stacked  # read as float32, the stored array beside it
    needed = ds.width * ds.height * ds.count * (itemsize + 5 if converted else itemsize)
    if decoded <= ds.width * ds.height or needed > WHOLE_RASTER_BYTES // max(1, together):
        return lambda win: read_masked(ds, win, nodata, stacked)
    whole = read_masked(ds, None, nodata, stacked)
    return lambda win: whole[:, win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width]


def check_written(path: Any, final: Any) -> None:
    """Read back every block of the raster just written at ``path`` (GDAL's band checksums, and its overviews)
    before it takes the name ``final``: GDAL writes its cached tiles when a dataset closes, and rasterio does not
    raise when those writes fail (a full disk), which would leave an unreadable file under the final name. A failure
    is an OSError naming ``final`` (ENOSPC when the disk is full, else EIO)."""
    import errno

    import rasterio

    from geomed_ssl.errors import write_error

    try:
        with rasterio.open(path) as src:
            for band in range(1, src.count + 1):
                src.checksum(band)
            levels = len(src.overviews(1))
        for level in range(levels):  # each overview level, block by block as the map itself
            with rasterio.open(path, overview_level=level) as src:
                for band in range(1, src.count + 1):
                    src.checksum(band)
    except Exception as err:
        failure = write_error(err, str(final))
        raise (failure or OSError(errno.EIO, f"{os.strerror(errno.EIO)}, the file came out unreadable ({err})",
                                  str(final))) from None
