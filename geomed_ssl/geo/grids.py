"""CRS names, and whether two rasters share one pixel grid and how they differ when not: the one rule behind the
label check (``labels.grids``) and the per-band files stacked by ``data.channels`` (``data.catalog``); and
the grid's hashable key (:func:`grid_identity`) by which date pairs and label copies group the dates of one ground.

Sizes are compared exactly; CRSs as coordinate systems (``CRS ==``), not as WKT text; the pixel axes relative to the
image's pixel size and the origin in pixels (a 1/1000-pixel tolerance), never relative to the coordinates' magnitude,
so a shift of a few pixels is found at a UTM northing of 5,000,000 m or at 14° of longitude as well as near 0.
"""

from __future__ import annotations

import functools
import warnings
from typing import Sequence

import numpy as np

PIXEL_TOL = 1e-3  # origins within a thousandth of a pixel are one grid


@functools.lru_cache(maxsize=64)  # called per stored row by similar and per file by inspect
def crs_name(wkt: str | None, none: str = "") -> str:
    """A short name of a CRS stored as WKT (``EPSG:32633``), the WKT itself when it has no code (unparsable: as
    stored), or ``none`` when there is none (pixels, or a volume's RAS millimetres)."""
    if not wkt:
        return none
    try:
        from rasterio.crs import CRS

        crs = CRS.from_wkt(wkt)
        return crs.to_string() if crs.to_epsg() is not None else wkt
    except Exception:  # an unparsable CRS is still reported as stored
        return wkt


def crs_text(wkt: str | None) -> str:
    """A CRS's short name for a message (``none`` without one)."""
    text = crs_name(wkt, "none")
    return text if len(text) <= 60 else text[:57] + "..."


def same_crs(a: str | None, b: str | None) -> bool:
    """Two CRSs (WKT) are the same coordinate system; two missing CRSs are the same too."""
    if not a or not b:
        return not a and not b
    from rasterio.crs import CRS

    return a == b or CRS.from_wkt(a) == CRS.from_wkt(b)


def linear_difference(a: Sequence[float], b: Sequence[float]) -> str:
    """How two transforms' pixel sizes or rotations differ (GDAL order a, b, c, d, e, f): the pixel size as the
    length of each pixel side, and the rotation of the rows, so a rotated grid is not reported as another size."""
    def size(t: Sequence[float]) -> tuple[float, float]:
        return float(np.hypot(t[0], t[3])), float(np.hypot(t[1], t[4]))

    def angle(t: Sequence[float]) -> float:
        return float(np.degrees(np.arctan2(t[3], t[0])))

    (aw, ah), (bw, bh) = size(a), size(b)
    parts = []
    if not np.allclose((aw, ah), (bw, bh), rtol=1e-6, atol=0):
        parts.append(f"pixel size {aw:g} x {ah:g} vs {bw:g} x {bh:g}")
    if abs(angle(a) - angle(b)) > 1e-6:
        parts.append(f"grid rotated by {angle(a):.4g}° vs {angle(b):.4g}°")
    if not parts:  # a flip or a shear: the axes' directions differ
        parts.append(f"pixel axes ({a[0]:g}, {a[1]:g}, {a[3]:g}, {a[4]:g}) vs ({b[0]:g}, {b[1]:g}, {b[3]:g}, "
                     f"{b[4]:g})")
    return ", ".join(parts)


def gcp_grid(path: str) -> tuple[str | None, list[float]] | None:
    """A raster georeferenced by ground control points only (no transform; Sentinel-1 GRD, scanned maps): their
    CRS and the affine transform fitted to them; None for any other raster."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import from_gcps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            gcps, gcp_crs = src.gcps
            if src.crs or not gcps:
                return None
            return (gcp_crs.to_wkt() if gcp_crs else None), [float(v) for v in list(from_gcps(gcps))[:6]]


def grid_diffs(shape: Sequence[int], crs: str | None, transform: Sequence[float] | None,
               ref_shape: Sequence[int], ref_crs: str | None, ref_transform: Sequence[float] | None,
               tolerance: float = PIXEL_TOL) -> list[str]:
    """How a raster's grid (size (rows, cols), CRS WKT, transform) differs from a reference's: one phrase per
    difference, "this vs reference"; empty when they share the grid. A missing transform is the identity.
    ``tolerance``: how far (pixels) the origins may lie apart, the pixel axes a thousandth of that (transforms
    fitted to ground control points are compared with half a pixel)."""
    from affine import Affine

    diffs = []
    if tuple(shape) != tuple(ref_shape):
        diffs.append(f"size {shape[1]}x{shape[0]} vs {ref_shape[1]}x{ref_shape[0]} (width x height)")
    if not same_crs(crs, ref_crs):
        diffs.append(f"CRS {crs_text(crs)} vs {crs_text(ref_crs)}")
    tr = [float(v) for v in list(transform or Affine.identity())[:6]]
    ref = [float(v) for v in list(ref_transform or Affine.identity())[:6]]
    pix = max(abs(ref[0]), abs(ref[4]), abs(ref[1]), abs(ref[3]), 1e-12)
    lin, ref_lin = [tr[i] for i in (0, 1, 3, 4)], [ref[i] for i in (0, 1, 3, 4)]
    if not np.allclose(lin, ref_lin, rtol=0, atol=tolerance * 1e-3 * pix):
        diffs.append(linear_difference(tr, ref))
    else:
        col, row = ~Affine(*ref) @ (tr[2], tr[5])
        if abs(col) > tolerance or abs(row) > tolerance:
            diffs.append(f"origin shifted by {col:+.3g} columns, {row:+.3g} rows "
                         f"(({tr[2]:.10g}, {tr[5]:.10g}) vs ({ref[2]:.10g}, {ref[5]:.10g}))")
    return diffs


def grid_identity(shape: Sequence[int], crs: str | None, transform: Sequence[float] | None) -> tuple:
    """A hashable key two rasters on one pixel grid share: size, CRS (by its code when it has one: two writers' WKT
    of one CRS differ in text) and transform, the origin in thousandths of a pixel (``PIXEL_TOL``), so float noise
    in a reprojected date's origin does not set it apart."""
    values = tuple(round(float(v), 9) for v in list(transform or ())[:6])
    if len(values) == 6 and values[0] and values[4]:  # (a, b, c, d, e, f): the origin (c, f) in pixels
        a, b, c, d, e, f = values
        values = (a, b, round(c / a / PIXEL_TOL), d, e, round(f / e / PIXEL_TOL))
    return tuple(int(n) for n in shape), crs_name(crs), values


def placed(crs: object, transform: Sequence[float] | None) -> bool:
    """Whether a raster's CRS and transform place it anywhere: GDAL reports the identity transform (and no CRS) for
    a file that has none, and an output given that transform would claim one (a ModelTransformation tag)."""
    return crs is not None or (transform is not None and [float(v) for v in list(transform)[:6]] != [1, 0, 0, 0, 1, 0])
