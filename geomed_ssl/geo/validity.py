"""Which values are missing: a band's nodata value (GDAL's rule, float fills near +-FLT_MAX included), non-finite
values, the pixels every band misses and the gaps one band has where others hold data; and the percentiles of what
is left."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

STD_FLOOR = 1e-6  # the smallest spread a band is scaled by


HUGE_FILL = 1e38  # float fills near +-FLT_MAX: no measurement lies beyond


def is_fill(array: np.ndarray, nodata: float) -> np.ndarray:
    """``array == nodata``; a float fill near +-FLT_MAX also matches every value beyond +-1e38 of its sign, as GDAL's
    mask does: tools write that tag and that fill rounded differently (a tag of -3.4e+38 beside a fill of
    -3.4028235e+38), and a missed fill would enter the statistics as -3.4e38."""
    hit = array == nodata
    if array.dtype.kind == "f" and abs(nodata) >= HUGE_FILL:
        hit |= (array <= -HUGE_FILL) if nodata < 0 else (array >= HUGE_FILL)
    return hit


def valid_mask(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """(C, *spatial) -> (*spatial) bool: all bands finite and not all bands equal to ``nodata`` (GDAL's rule for a
    nodata value the bands share: a pixel is missing when every band is; see :func:`band_gaps`)."""
    valid = np.isfinite(array).all(axis=0) if array.dtype.kind == "f" else np.ones(array.shape[1:], bool)
    if nodata is not None and math.isfinite(nodata):
        valid &= ~is_fill(array, nodata).all(axis=0)
    return valid


def band_gaps(array: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(C, *spatial) bool: the band values equal to ``nodata`` (None when there is no finite nodata value). In a
    pixel :func:`valid_mask` keeps (some band holds data: e.g. a 60 m band's edge beside valid 10 m bands), they are
    left out of that band's statistics and fed as its mean (0 after normalisation), never as the fill value."""
    if nodata is None or not math.isfinite(nodata):
        return None
    return is_fill(array, nodata)


def valid_values(array: np.ndarray, valid: np.ndarray, gaps: np.ndarray | None,
                 dtype: Any = np.float64) -> np.ndarray:
    """(C, n) ``dtype``: each band's values at the ``valid`` pixels, its own ``gaps`` (:func:`band_gaps` of the
    values as read) NaN: what a band's statistics and value range are taken from."""
    vals = array[:, valid].astype(dtype)
    if gaps is not None:
        vals[gaps[:, valid]] = np.nan
    return vals


def band_percentiles(vals: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """(len(q), C) percentiles of (C, n) values, leaving NaN (a band's gaps) out; NaN for a band without values."""
    if not np.isnan(vals).any():
        return np.percentile(vals, q, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-gap band: NaN, said by the callers
        return np.nanpercentile(vals, q, axis=1)
