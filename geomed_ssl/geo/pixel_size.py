"""The size of a raster's pixel on the ground (its CRS's units per pixel; degrees as metres at the raster's centre)
and pixel or voxel sizes counted in groups within a tolerance: what ``inspect`` lists and what tells a model's
training scale from the data's."""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any, Sequence

import numpy as np


@functools.lru_cache(maxsize=64)  # one parse per CRS, not per file (summary and warnings both ask)
def crs_units(wkt: str | None) -> str:
    if not wkt:
        return "px"
    try:
        from rasterio.crs import CRS

        crs = CRS.from_wkt(wkt)
        return "°" if crs.is_geographic else {"metre": "m", "meter": "m"}.get(crs.linear_units, crs.linear_units)
    except Exception:
        return "?"


M_PER_DEGREE = (111_320.0, 110_574.0)  # along a parallel at the equator (times cos(latitude)), along a meridian


def pixel_size(record: Any) -> tuple[float, float, str]:
    """(x, y, units) of a raster's pixel in its CRS's units; in a geographic CRS, metres on the ground at the
    raster's centre (0.0001° is 11 m wide at the equator, 3.8 m at 70° N: degrees alone would hide that)."""
    t = list(record.transform or [1, 0, 0, 0, 1, 0])
    x, y = math.hypot(t[0], t[3]), math.hypot(t[1], t[4])
    if not record.crs and (x, y) != (1.0, 1.0):  # a transform without a CRS: its units are unknown, not pixels
        return x, y, "(units of the transform; no CRS)"
    units = crs_units(record.crs)
    if units == "°":
        h, w = record.shape[-2:]
        lat = t[3] * w / 2 + t[4] * h / 2 + t[5]
        return x * M_PER_DEGREE[0] * math.cos(math.radians(max(-90.0, min(90.0, lat)))), y * M_PER_DEGREE[1], "m"
    return x, y, units


def size_groups(sizes: Sequence[tuple[float, ...]], tolerance: float = 0.03) -> Counter:
    """Pixel or voxel sizes ``(*per axis, unit)`` counted in groups within ``tolerance`` of each other (a
    reprojected 9.97 m is 10 m), each named by its members' median per axis to 3 significant digits."""
    groups: list[list[tuple[Any, ...]]] = []
    for size in sorted(sizes):
        *axes, unit = size
        home = next((g for g in groups if g[0][-1] == unit and len(g[0]) == len(size) and all(
            abs(v - w) <= tolerance * w for v, w in zip(axes, g[0][:-1]))), None)
        if home is None:
            groups.append([size])
        else:
            home.append(size)
    return Counter({" x ".join(f"{np.median([m[i] for m in g]):.3g}" for i in range(len(g[0]) - 1))
                    + f" {g[0][-1]}": len(g) for g in groups})
