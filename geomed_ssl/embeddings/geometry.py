"""Where an embedding's window lies on the ground: the corners of pixel / voxel boxes through a raster's transform
(GDAL pixel-corner convention), its ground control points, or a volume's RAS affine (voxel centres on integer
indices), and the table columns made from them (centre, bounds, footprint as WKT or as GeoParquet's WKB)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def corner_pixels(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) boxes [row, col, h, w] -> rows and columns (n, 4) of their corners (pixel-corner convention),
    clockwise from the top-left."""
    r, col, h, w = (boxes[:, i].astype(np.float64) for i in range(4))
    return np.stack([r, r, r + h, r + h], axis=1), np.stack([col, col + w, col + w, col], axis=1)


def raster_corners(boxes: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """(n, 4) boxes [row, col, h, w] -> (n, 4, 2) map coordinates of the corners (:func:`corner_pixels`)."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    rows, cols = corner_pixels(boxes)
    return np.stack([a * cols + b * rows + c, d * cols + e * rows + f], axis=-1)


def volume_corners(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(n, 6) voxel boxes [i, j, k, di, dj, dk] -> (n, 8, 3) world (RAS mm) corners; voxel centres sit on integer
    indices, so a box spans index - 0.5 .. index + size - 0.5."""
    lo = boxes[:, :3].astype(np.float64) - 0.5
    hi = lo + boxes[:, 3:].astype(np.float64)
    sel = np.array([[(m >> a) & 1 for a in range(3)] for m in range(8)], bool)  # (8, 3) which end per axis
    vox = np.where(sel[None], hi[:, None], lo[:, None])  # (n, 8, 3)
    return vox @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def gcp_corners(boxes: np.ndarray, gcps: list[list[float]]) -> np.ndarray | None:
    """(n, 4) pixel boxes -> (n, 4, 2) corners through a file's ground control points ``[row, col, x, y, z]``
    (GDAL's polynomial fit, as a GIS places such a scene), or None when they cannot be fitted."""
    from rasterio.control import GroundControlPoint
    from rasterio.errors import RasterioError
    from rasterio.transform import GCPTransformer

    rows, cols = corner_pixels(boxes)
    points = [GroundControlPoint(row=pr, col=pc, x=x, y=y, z=z) for pr, pc, x, y, z in gcps]
    try:
        with GCPTransformer(points) as transformer:
            xs, ys = transformer.xy(rows.ravel(), cols.ravel(), offset="ul")
    except (RasterioError, ValueError):
        return None
    return np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], axis=-1).reshape(len(boxes), 4, 2)


def geo_columns(boxes: np.ndarray, file_meta: dict[str, Any]) -> dict[str, Any]:
    """Centre, bounds, footprint polygon (WKT, rasters) and CRS of each box of one file; a raster georeferenced by
    ground control points only (Sentinel-1 GRD) is placed through them, in their CRS."""
    n = len(boxes)
    if file_meta["kind"] == "raster":
        crs, corners = file_meta.get("crs"), None
        if crs is None and file_meta.get("gcps") and n:
            corners = gcp_corners(boxes, file_meta["gcps"])
            crs = file_meta.get("gcp_crs") if corners is not None else None
        if corners is None:
            corners = raster_corners(boxes, file_meta["transform"])  # (n, 4, 2)
        ring = np.concatenate([corners, corners[:, :1]], axis=1)  # (n, 5, 2) closed
        wkt = ["POLYGON ((" + ", ".join(f"{x:.12g} {y:.12g}" for x, y in pts) + "))" for pts in ring]
        centre = corners.mean(axis=1)  # a parallelogram's centre is the mean of its corners
        lo, hi = corners.min(axis=1), corners.max(axis=1)
        none = [None] * n
        return {"x": centre[:, 0], "y": centre[:, 1], "z": none, "minx": lo[:, 0], "miny": lo[:, 1], "minz": none,
                "maxx": hi[:, 0], "maxy": hi[:, 1], "maxz": none, "footprint_wkt": wkt, "crs": [crs] * n}
    corners = volume_corners(boxes, np.asarray(file_meta["affine"]))  # (n, 8, 3)
    centre, lo, hi = corners.mean(axis=1), corners.min(axis=1), corners.max(axis=1)
    return {"x": centre[:, 0], "y": centre[:, 1], "z": centre[:, 2], "minx": lo[:, 0], "miny": lo[:, 1],
            "minz": lo[:, 2], "maxx": hi[:, 0], "maxy": hi[:, 1], "maxz": hi[:, 2], "footprint_wkt": [None] * n,
            "crs": [None] * n}


def footprint_wkb(corners: np.ndarray) -> Any:
    """(n, 4, 2) raster corners -> a pyarrow binary array of little-endian WKB polygons (GeoParquet geometry)."""
    import pyarrow as pa

    n = len(corners)
    rec = np.zeros(n, dtype=np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"),
                                      ("xy", "<f8", (10,))], align=False))
    rec["order"], rec["type"], rec["rings"], rec["points"] = 1, 3, 1, 5
    rec["xy"] = np.concatenate([corners, corners[:, :1]], axis=1).reshape(n, 10)
    offsets = np.arange(n + 1, dtype=np.int32) * rec.dtype.itemsize
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rec.tobytes())])
