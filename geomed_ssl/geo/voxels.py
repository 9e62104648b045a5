"""Voxel grids of volumes: whether an affine maps a 3D grid at all, a voxel's size from its affine, the grid a
target spacing gives, and the resampling onto it (trilinear for images, nearest-neighbour indices for label
volumes), first and last voxel centres kept."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}  # NIfTI's spatial units (xyzt_units)


def unit_mm(img: Any) -> float:
    """How many mm one world unit of a NIfTI image is: a header may give them in metres or microns
    (``xyzt_units``: micro-CT, microscopy); mm and unknown units are read as mm."""
    try:
        unit = img.header.get_xyzt_units()[0]
    except AttributeError:  # a header without units (Analyze)
        return 1.0
    return MM_PER_UNIT.get(unit, 1.0)


def mm_affine(img: Any) -> np.ndarray:
    """A NIfTI image's affine with its world coordinates in mm (:func:`unit_mm`)."""
    affine = np.array(img.affine, np.float64)
    affine[:3] *= unit_mm(img)
    return affine


def voxel_mm(affine: np.ndarray) -> np.ndarray:
    """The size of a voxel along each array axis (mm: the length of each column of the affine's 3x3 part)."""
    return np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))


AFFINE_PROBLEM = ("has an affine that maps no 3D grid (zero, repeated or non-finite axes in its sform / qform "
                  "header): fix the header (nibabel's set_sform / set_qform)")  # the caller adds what else to do


def maps_a_grid(affine: np.ndarray) -> bool:
    """A volume's affine maps its voxel axes to three independent directions (not a header of zeros)."""
    import nibabel as nib

    affine = np.asarray(affine, np.float64)
    try:
        codes = nib.aff2axcodes(affine) if np.isfinite(affine).all() else (None,)
    except Exception:
        codes = (None,)
    return None not in codes and abs(float(np.linalg.det(affine[:3, :3]))) >= 1e-12


GRID_TOLERANCE = 0.01  # voxels: two affines closer than this everywhere on a grid place its voxels alike


def grid_gap(shape: Sequence[int], affine: np.ndarray, other: np.ndarray) -> float:
    """How far apart, in voxels of ``affine``, the grid of ``shape`` voxels lands under ``other`` than under
    ``affine`` at its farthest corner: under :data:`GRID_TOLERANCE` the two affines place every voxel alike (float32
    header rounding between an image and its label, or two contrasts of one acquisition, is far below it)."""
    corners = np.array(np.meshgrid(*[[0, max(int(n) - 1, 0)] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    points = np.vstack([corners, np.ones(corners.shape[1])])
    a, b = np.asarray(affine, np.float64), np.asarray(other, np.float64)
    try:
        moved = np.linalg.solve(a, b @ points)[:3]
    except np.linalg.LinAlgError:
        return float("inf")
    return float(np.abs(moved - corners).max())


def resampled_shape(shape: Sequence[int], voxel_mm: Sequence[float], spacing: Sequence[float]) -> list[int]:
    """The grid :func:`resample_to_spacing` gives ``shape`` voxels of ``voxel_mm``: round(extent / spacing) + 1 per
    axis, the first and last voxel centres kept."""
    return [max(1, int(round((n - 1) * c / s)) + 1) if n > 1 else 1 for n, c, s in zip(shape, voxel_mm, spacing)]


def nearest_index(shape: Sequence[int], new: Sequence[int]) -> tuple[np.ndarray, ...]:
    """``np.ix_`` indices taking an array of ``shape`` onto the grid of ``new`` voxels :func:`resample_to_spacing`
    gives it (first and last voxel centres kept), nearest neighbour: how label volumes follow their images."""
    return np.ix_(*[np.floor(np.arange(m) * ((n - 1) / (m - 1) if m > 1 else 0) + 0.5).astype(np.int64)
                    for n, m in zip(shape, new)])


def resample_to_spacing(arr: np.ndarray, affine: np.ndarray, spacing: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling of (C, D, H, W) to about ``spacing`` mm, keeping the first and last voxel centres.

    The new grid has round(extent / spacing) + 1 voxels per axis; the returned affine is exact for that grid.
    Voxels without data (NaN in a band) are left out of the interpolation rather than spread: a new voxel is the
    weighted mean of the valid voxels around it, and NaN only where they weigh less than half.
    """
    import torch

    current = voxel_mm(affine)
    old = arr.shape[1:]
    new = resampled_shape(old, current, spacing)
    if list(old) == new:
        return arr, affine
    valid = np.isfinite(arr).all(axis=0)  # (D, H, W)
    holes = not valid.all()
    data = np.ascontiguousarray(np.where(valid[None], arr, 0) if holes else arr, dtype=np.float32)
    t = torch.from_numpy(data)[None]  # (1, C, D, H, W)
    if holes:  # the validity interpolated beside the data, as the weight each new voxel's value is divided by
        t = torch.cat([t, torch.from_numpy(valid.astype(np.float32))[None, None]], dim=1)
    out = torch.nn.functional.interpolate(t, size=tuple(new), mode="trilinear", align_corners=True)[0]
    if holes:
        weight = out[-1]
        out = torch.where(weight >= 0.5, out[:-1] / weight.clamp_min(1e-6), torch.tensor(float("nan")))
    scale = [(n - 1) / (m - 1) if m > 1 else 1.0 for n, m in zip(old, new)]
    return out.numpy(), affine @ np.diag([*scale, 1.0])
