"""Tiling a scene: window origins inside the scene or on a grid from the origin, and the centred window."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.windows.tiling import (centre_start, grid_shape, grid_starts, inside_starts, overlap_stride,
                                    patch_floor, window_starts)


@pytest.mark.parametrize("size, window, stride", [(100, 32, 24), (96, 32, 32), (33, 32, 1), (20, 32, 8)])
def test_inside_starts_cover_every_pixel_with_windows_inside_the_axis(size, window, stride):
    starts = inside_starts(size, window, stride)
    assert starts == sorted(set(starts)) and starts[0] == 0
    if size >= window:
        assert starts[-1] == size - window  # the last window ends at the edge
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered.all()
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_window_starts_step_by_the_overlap():
    assert overlap_stride(96, 0.25) == 72 and overlap_stride(4, 0.99) == 1
    assert window_starts(1000, 96, 0.25) == inside_starts(1000, 96, 72)
    assert window_starts(1000, 96, 0.25)[-2:] == [864, 904]


def test_grid_starts_sit_on_the_grid_and_the_last_may_run_past_the_edge():
    assert grid_starts(100, 32, 24) == [0, 24, 48, 72]  # 72 + 32 > 100: padded, still on the grid
    assert grid_starts(96, 32, 32) == [0, 32, 64]
    assert grid_starts(10, 32, 8) == [0]
    assert grid_shape((100, 96, 10), (32, 32, 32), (24, 32, 8)) == [4, 3, 1]
    assert grid_starts(48, 16, 40) == [0, 40] and grid_starts(48, 16, 100) == [0]  # never an origin past the edge
    assert grid_starts(48, 16, 10**10) == [0]


def test_centred_window_and_patch_multiple():
    assert centre_start(11, 8) == 1 and centre_start(10, 10) == 0 and centre_start(9, 4) == 2
    assert patch_floor(11, 4) == 8 and patch_floor(3, 4) == 0
