"""Volume intensities before the archive statistics: CT clipped to its window (in HU), MR scaled by each volume's own
[p1, p99]; shared by the statistics and the volume reader, so both see the same values."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from geomed_ssl.geo.validity import STD_FLOOR, is_fill, valid_mask
from geomed_ssl.errors import DataError

CT_LOOKING_MIN = -500.0  # a volume whose minimum is below this looks like CT (Hounsfield units)


def looks_like_ct(minimum: float | None) -> bool:
    """A volume whose lowest value is below -500 (CT's air is about -1000 HU) looks like CT."""
    return minimum is not None and minimum < CT_LOOKING_MIN


def lowest_value(record: Any) -> float | None:
    """The smallest finite band minimum of a record's ``value_range`` (from its probe); None without one."""
    finite = [v[0] for v in getattr(record, "value_range", None) or [] if math.isfinite(v[0])]
    return min(finite) if finite else None


def intensity_kind(data_cfg: Any, minimum: float | None) -> str:
    """'ct', 'mr' or 'none' for a volume: ``data.intensity`` unless 'auto', where a minimum below -500 means CT."""
    mode = getattr(data_cfg, "intensity", "auto")
    if mode != "auto":
        return mode
    return "ct" if looks_like_ct(minimum) else "mr"


def intensity_args(record: Any, data_cfg: Any) -> dict[str, Any]:
    """``kind_hint`` and ``percentiles`` for ``preprocess_intensity`` of a volume record, from the catalog's
    ``value_range``: CT or MR decided on the smallest band minimum, MR scaled by each band's [p1, p99]. Shared by
    ``compute_stats`` and the volume reader, so the statistics describe exactly the intensities the reader gives.
    Both are None without a ``value_range`` (the array decides for itself)."""
    value_range = getattr(record, "value_range", None)
    if not value_range:
        return {"kind_hint": None, "percentiles": None}
    return {"kind_hint": intensity_kind(data_cfg, lowest_value(record)), "percentiles": [v[1:3] for v in value_range]}


def preprocess_intensity(
    array: np.ndarray,
    data_cfg: Any,
    kind_hint: str | None = None,
    valid: np.ndarray | None = None,
    percentiles: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """Volume intensity preprocessing, (C, *spatial) -> float32 (C, *spatial). Pure; shared by reader and stats.

    Mode: ``data.intensity`` unless 'auto'; then ``kind_hint`` ('ct'|'mr'|'none') if given, else CT when the valid
    minimum is below -500 HU, else MR. CT: clip to ``data.ct_window`` (values stay in HU). MR: per channel, scale
    [p1, p99] to [0, 1] and clip, with ``percentiles`` ((C, 2) of the whole volume) or the array's own valid values.
    NaN stays NaN, +-inf becomes NaN and values equal to ``data.nodata`` are left unchanged, so the valid mask is the
    same afterwards.
    """
    arr = np.asarray(array)
    nodata = getattr(data_cfg, "nodata", None)
    if valid is None:
        valid = valid_mask(arr, nodata)
    mode = getattr(data_cfg, "intensity", "auto")
    if mode == "auto":
        if kind_hint is not None:
            mode = kind_hint
        else:
            mode = intensity_kind(data_cfg, float(arr[:, valid].min()) if valid.any() else None)
    out = arr.astype(np.float32, copy=True)
    if mode == "none":
        return out
    keep = is_fill(arr, nodata) if nodata is not None and math.isfinite(nodata) else None
    if mode == "ct":
        lo, hi = (float(v) for v in data_cfg.ct_window)
        np.clip(out, lo, hi, out=out)
    elif mode == "mr":
        for c in range(out.shape[0]):
            if percentiles is not None:
                p1, p99 = float(percentiles[c][0]), float(percentiles[c][1])
            else:
                vals = out[c][valid]
                if vals.size == 0:
                    continue
                p1, p99 = (float(v) for v in np.percentile(vals, [1, 99]))
            out[c] -= p1
            out[c] /= max(p99 - p1, STD_FLOOR)
            np.clip(out[c], 0.0, 1.0, out=out[c])
    else:
        raise DataError(f"data.intensity must be auto, ct, mr or none; got '{mode}'.")
    if keep is not None:
        out[keep] = arr[keep]
    out[np.isinf(arr)] = np.nan  # clipping made +-inf a valid 1.0 (MR) or window edge (CT); it stays missing
    return out


def ct_bounds(records: Sequence[Any], data_cfg: Any) -> tuple[float, float] | None:
    """``data.ct_window`` when every record is a volume read as CT, else None: CT's clip is its window, so the
    percentiles of windows that are mostly air (p99 near 250 HU over an abdomen) do not flatten bone above them."""
    kinds = {intensity_args(r, data_cfg)["kind_hint"] if r.kind == "volume" else None for r in records}
    if kinds != {"ct"}:
        return None
    lo, hi = (float(v) for v in data_cfg.ct_window)
    return lo, hi
