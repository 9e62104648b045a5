"""Tiling a scene (a raster's rows and columns, a volume's voxel axes) into windows: where the windows of an axis
start, the grid of windows over a file, and the centred window. Every command that walks a scene takes its windows
from here: ``predict`` (overlapping windows kept inside the scene), ``embed`` / ``similar`` (a regular grid from the
origin: the map grid of the embeddings; windows kept inside a region) and ``attention`` / whole-image
classification (one centred window); and the weights overlapping windows are blended with (``predict``, the
frozen probes' features). Pure geometry: no reading.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Sequence

import numpy as np

DEFAULT_OVERLAP = 0.25  # window overlap of predict (and of the frozen probes' features: models.probe)
GAUSSIAN_SIGMA = 0.125  # sigma as a fraction of the window side (nnU-Net / MONAI default)
MIN_WEIGHT = 1e-3  # blending weights are floored at this fraction of the centre weight


def overlap_stride(window: int, overlap: float) -> int:
    """The step between windows of side ``window`` that overlap by the fraction ``overlap`` in [0, 1); at least 1."""
    return max(1, int(round(window * (1.0 - overlap))))


def inside_starts(size: int, window: int, stride: int) -> list[int]:
    """Strictly increasing window origins along one axis, every ``stride`` from 0, the last one shifted back to end
    at the edge: every window lies inside the axis and every pixel is covered.

    A window larger than the axis gives one origin (0); the window is then padded with nodata.
    """
    if size <= window:
        return [0]
    return list(range(0, size - window, stride)) + [size - window]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """:func:`inside_starts` of windows that overlap by ``overlap`` (sliding-window prediction)."""
    return inside_starts(size, window, overlap_stride(window, overlap))


def grid_starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins along one axis on a regular grid from 0; the last window may run past the edge (it is
    padded with nodata) so every pixel is covered (with ``stride <= window``) and every window sits on the grid. No
    origin lies beyond the edge: a stride longer than the axis gives one window."""
    if size <= window:
        return [0]
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1) if i * stride < size]


def grid_shape(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> list[int]:
    """Windows per axis of the :func:`grid_starts` grid over ``shape``."""
    return [len(grid_starts(s, w, st)) for s, w, st in zip(shape, window, stride)]


def centre_start(size: int, keep: int) -> int:
    """Origin of the centred run of ``keep`` pixels along an axis of ``size`` (the extra pixel goes to the end)."""
    return (size - keep) // 2


def patch_floor(size: int, patch: int) -> int:
    """The largest multiple of the token ``patch`` that fits in ``size`` (0 when the patch does not fit)."""
    return (size // patch) * patch


def blend_weights(window: Sequence[int], blend: str) -> np.ndarray:
    """Per-pixel blending weight of one window, max 1, floored at ``MIN_WEIGHT``: float32 ``window`` shape.

    gaussian: sigma = 0.125 * side per axis; linear: a tent falling to the edges; constant: ones.
    """
    axes = []
    for n in window:
        i = np.arange(n, dtype=np.float64)
        if blend == "gaussian":
            w = np.exp(-0.5 * ((i - (n - 1) / 2) / (GAUSSIAN_SIGMA * n)) ** 2)
        elif blend == "linear":
            w = np.minimum(i + 1, n - i) / math.ceil(n / 2)
        else:
            w = np.ones(n)
        axes.append(w)
    out = reduce(np.multiply.outer, axes)
    out /= out.max()
    return np.maximum(out, MIN_WEIGHT).astype(np.float32)


def slab_rows(shape: Sequence[int], channels: int, budget: float = 2e7) -> int:
    """Rows (first spatial axis) per slab of a scene of ``shape`` so one slab of ``channels`` maps holds about
    ``budget`` values: what the whole-scene passes that cannot hold a scene's maps at once (the frozen probes'
    reads, the baselines' features) walk it by."""
    return max(1, int(budget // max(1, channels * math.prod(shape[1:]))))
