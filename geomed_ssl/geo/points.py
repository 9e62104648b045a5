"""Where a point a user names lies on a grid: a map point on a raster's pixels (in its CRS or another), a world
point in mm on a volume's voxels (through its affine). ``similar --at`` picks a stored row by it."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from geomed_ssl.errors import DataError
from geomed_ssl.geo.grids import crs_text, placed


def raster_position(point: Sequence[float], path: str, crs: Any, transform: Sequence[float] | None,
                    shape: Sequence[int], at_crs: str | None = None) -> tuple[float, float]:
    """A map point (x, y) in the raster's CRS, or in ``at_crs`` -> (row, col) on its pixel grid, pixel r spanning
    r..r+1; refused off the raster, or on a raster without a geotransform."""
    from affine import Affine

    x, y = typed = point
    if not placed(crs, transform):
        raise DataError(f"'{path}' has no geotransform (no georeference, or ground control points only), so a "
                        "map point cannot be placed on its pixels; give --box ROW,COL,H,W, or warp it onto a grid "
                        "first (gdalwarp).")
    if at_crs is not None and crs is None:
        raise DataError(f"'{path}' has no CRS to carry --at-crs {at_crs} to; give --at in its own coordinates.")
    if at_crs is not None:
        from rasterio.crs import CRS
        from rasterio.warp import transform as warp

        (x,), (y,) = warp(CRS.from_user_input(at_crs), CRS.from_user_input(crs), [x], [y])
    col, row = ~Affine(*list(transform)[:6]) @ (x, y)
    h, w = shape
    if not (0 <= row < h and 0 <= col < w):
        moved = f" ({x:.9g},{y:.9g} in the file's CRS)" if at_crs is not None else ""
        raise DataError(f"--at {typed[0]:.9g},{typed[1]:.9g}{moved} lies outside '{path}' (pixel row "
                        f"{row:.1f}, col {col:.1f} of {h} x {w}; CRS {crs_text(crs)}): give a point on the "
                        "file, in its CRS or with --at-crs.")
    return row, col


def volume_position(point: Sequence[float], path: str, affine: Any, shape: Sequence[int],
                    reach: Sequence[int]) -> tuple[float, ...]:
    """A world point (x, y, z) in mm -> its place on the voxel grid of ``affine`` (voxel i spanning i..i+1); refused
    beyond ``reach`` voxels along each axis (the volume's ``shape`` and the padding its edge windows reach into)."""
    affine = np.asarray(affine, np.float64)
    vox = np.linalg.solve(affine[:3, :3], np.asarray(point, np.float64) - affine[:3, 3])
    pos = tuple(float(v) + 0.5 for v in vox)
    if not all(0 <= v < n for v, n in zip(pos, reach)):
        raise DataError(f"--at {','.join(f'{v:.9g}' for v in point)} (mm) lies outside '{path}' (voxel "
                        f"{', '.join(f'{v - 0.5:.1f}' for v in pos)} of its RAS grid {'x'.join(map(str, shape))}, "
                        f"whose voxel centres span {world_span(affine, shape)}): give a point inside the volume, in "
                        "the world coordinates its NIfTI affine gives (the x, y, z of embeddings.parquet and "
                        "similar.csv).")
    return pos


def world_span(affine: np.ndarray, shape: Sequence[int]) -> str:
    """The world extent (mm) of a grid's voxel centres, per axis: "x -90..90, y -126..90, z -72..108"."""
    ends = np.array([[(m >> a) & 1 for a in range(3)] for m in range(8)]) * (np.asarray(shape) - 1)
    world = ends @ affine[:3, :3].T + affine[:3, 3]
    return ", ".join(f"{ax} {lo:.4g}..{hi:.4g}" for ax, lo, hi in zip("xyz", world.min(0), world.max(0)))
