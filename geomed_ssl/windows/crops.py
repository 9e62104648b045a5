"""Cutting arrays: a box that may reach outside the array (padded with a fill value), and centred crops (to a size,
or to the largest multiple of the token patch). Spatial axes are the trailing ones; leading axes (bands) are kept.
Where the windows lie is :mod:`geomed_ssl.windows.tiling`'s business; this module only cuts.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from geomed_ssl.windows.tiling import centre_start, patch_floor


def pad_crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: Any,
             dtype: Any = None) -> np.ndarray:
    """``array[..., start:start+size]`` over the last ``len(size)`` axes, ``fill`` outside the array: a new array of
    shape ``(*lead, *size)`` and ``dtype`` (default the array's)."""
    nd = len(size)
    lead = array.shape[: array.ndim - nd]
    out = np.full((*lead, *size), fill, dtype=dtype or array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-nd:]):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = array[(..., *src)]
    return out


def centre_crop(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(C, *S) -> (C, *min(S, size)) around the centre (a view)."""
    slices = [slice(None)]
    for n, s in zip(array.shape[1:], size):
        keep = min(n, s)
        start = centre_start(n, keep)
        slices.append(slice(start, start + keep))
    return array[tuple(slices)]


def crop_to_patch(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Centre-crop the spatial axes of (C, *S) to the largest multiple of the token patch (a view); a side shorter
    than one token is kept whole (:func:`pad_to_patch` pads it)."""
    return centre_crop(array, [patch_floor(n, p) or n for n, p in zip(array.shape[1:], patch)])


def pad_to_patch(image: np.ndarray, valid: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A normalised image (C, *S) and its valid mask (*S) with each side shorter than ``patch`` (one token, or a
    classifier's training crop) padded to it, evenly at both ends: zeros (the bands' mean), not valid. A thick-slice
    scan with fewer slices than a token is deep still makes a token of the classifier's."""
    pads = [((p - n) // 2, p - n - (p - n) // 2) if n < p else (0, 0) for n, p in zip(valid.shape, patch)]
    if not any(a or b for a, b in pads):
        return image, valid
    return np.pad(image, [(0, 0), *pads]), np.pad(valid, pads)
