"""Whether new data is in the units a model was trained on: each band's robust value range against the model's
band statistics (``data.stats.BandStats``: their p1 / p99), the check every command applying a model to new data
makes before clipping to the training range flattens a band; and bands of one value in every file (bad bands)."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("geomed_ssl")

MIN_RANGE_OVERLAP = 0.1  # a band whose [p1, p99] lies less than this fraction inside the training one is "far"
# ... of the training [p1, p99] widened by this fraction of its span on each side: a dark or bright class (a forest
# in B01, water in the NIR) lies just past the percentiles of every archive and is no sign of wrong units
RANGE_MARGIN = 0.25


def far_from_stats(value_range: Sequence[Sequence[float]] | None, stats: Any) -> list[int]:
    """Bands whose data range is far from the training statistics: less than ``MIN_RANGE_OVERLAP`` of the data's
    [p1, p99] lies inside the statistics' [p1, p99] widened by ``RANGE_MARGIN`` of its span on each side, so
    clipping flattens the band (e.g. reflectance 0-0.15 fed to an encoder trained on DN 1000-2000: every pixel
    becomes p1). ``value_range`` is per band [min, p1, p99, max] (``FileRecord.value_range``) in the statistics'
    band order; bands with no valid value are skipped."""
    out = []
    for i, (row, lo, hi) in enumerate(zip(value_range or [], stats.p1, stats.p99)):
        a, b = float(row[1]), float(row[2])
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        lo, hi = lo - RANGE_MARGIN * (hi - lo), hi + RANGE_MARGIN * (hi - lo)
        inside = max(0.0, min(b, hi) - max(a, lo))
        span = b - a
        fraction = inside / span if span > 0 else float(lo <= a <= hi)
        if fraction < MIN_RANGE_OVERLAP:
            out.append(i)
    return out


def warn_far_from_stats(items: Sequence[tuple[str, Sequence[Sequence[float]] | None]], stats: Any) -> list[str]:
    """The one range check of every command that applies a model's statistics to new data: for ``items`` (path,
    value range in the statistics' band order), one warning naming the files and bands far from the statistics
    (:func:`far_from_stats`). Returns the paths named."""
    far = [(path, far_from_stats(vr, stats)) for path, vr in items]
    far = [(p, bands) for p, bands in far if bands]
    if not far:
        return []
    first_path, first_bands = far[0]
    vr = dict(items)[first_path]
    shown = ", ".join(f"{stats.band_names[i]} {float(vr[i][1]):.4g}..{float(vr[i][2]):.4g} (trained on "
                      f"{stats.p1[i]:.4g}..{stats.p99[i]:.4g})" for i in first_bands[:4])
    more = f" and {len(far) - 1} more file(s)" if len(far) > 1 else ""
    log.warning("warning: the value range of '%s'%s is far from the model's training statistics in band(s) %s "
                "(p1..p99): clipping to the training range flattens them, so the model sees almost constant "
                "input. Check the units (reflectance vs digital numbers, a scale factor) and the nodata value (a "
                "fill like -9999 that the file does not tag: data.nodata, or tag it: gdal_edit.py -a_nodata -9999 "
                "FILE).",
                first_path, more, shown)
    return [p for p, _ in far]


def _scaling_text(scaling: Sequence[Sequence[float]] | None) -> str:
    if scaling is None or (all(v == 1 for v in scaling[0]) and all(v == 0 for v in scaling[1])):
        return "none: values as stored"
    scales, offsets = (sorted(set(float(v) for v in row)) for row in scaling)
    show = lambda vals: f"{vals[0]:g}" if len(vals) == 1 else "/".join(f"{v:g}" for v in vals[:3])  # noqa: E731
    return f"scale {show(scales)}, offset {show(offsets)}"


def other_scaling(scaling: Sequence[Sequence[float]] | None, stats: Any) -> bool:
    """Whether a file's [scales, offsets] (None: untagged) differ from those the statistics were computed on
    (``stats.scaling``; never, when that is unknown: statistics of older versions, or of a mixed archive)."""
    trained = getattr(stats, "scaling", None)
    if trained is None:
        return False
    n = len(trained[0])
    mine = scaling if scaling is not None else [[1.0] * n, [0.0] * n]
    return any(not math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
               for row_a, row_b in zip(mine, trained) for a, b in zip(row_a, row_b))


def warn_other_scaling(items: Sequence[tuple[str, Sequence[Sequence[float]] | None]], stats: Any) -> list[str]:
    """One warning naming the files (``items``: path, [scales, offsets] in the statistics' band order, None when
    untagged) whose GeoTIFF scale / offset tags differ from those of the files the model was trained on. Values are
    read as stored, so such a file's numbers mean something else (Sentinel-2 L2A from processing baseline 04.00, in
    2022, adds an offset of -1000 to every band: one shift the range check cannot see). Returns the paths named."""
    odd = [(p, sc) for p, sc in items if other_scaling(sc, stats)]
    if odd:
        path, scaling = odd[0]
        more = f" and {len(odd) - 1} more file(s)" if len(odd) > 1 else ""
        log.warning("warning: '%s'%s %s scale / offset tags (%s) other than the files this model was trained on "
                    "(%s): values are read as stored, so the same ground reads as other numbers. Bring the files to "
                    "one unit (gdal_translate -unscale -ot Float32 applies a file's tags; an untagged file of "
                    "digital numbers needs its tags set first, gdal_edit.py -scale S -offset O), or train on files "
                    "like these.", path, more, "carry" if more else "carries", _scaling_text(scaling),
                    _scaling_text(stats.scaling))
    return [p for p, _ in odd]


def warn_summaries(summaries: Sequence[dict[str, Any]], stats: Any) -> None:
    """The scale / offset and range checks over predictions' summaries (``predict_raster``'s: ``input``,
    ``value_scaling``, ``value_range``), one warning each for all of them."""
    warn_other_scaling([(s["input"], s["value_scaling"]) for s in summaries if "value_scaling" in s], stats)
    warn_far_from_stats([(s["input"], s["value_range"]) for s in summaries if s.get("value_range")], stats)


def constant_bands(records: Sequence[Any], band_names: Sequence[str]) -> list[tuple[str, float]]:
    """(band, value) of the bands that hold one value in every file's preview read while another band varies: bad
    bands (an ENVI cube's ``bbl`` list, water absorption, a dead detector) written as zeros, which carry nothing to
    learn. Files that hold the catalog's bands in its order only."""
    recs = [r for r in records if r.value_range and list(r.band_names) == list(band_names)]
    if not recs:
        return []
    low = np.array([[row[0] for row in r.value_range] for r in recs], np.float64)  # (files, bands)
    high = np.array([[row[3] for row in r.value_range] for r in recs], np.float64)
    flat = np.all(low == high, axis=0) & np.all(low == low[:1], axis=0)
    if flat.all() or not flat.any():
        return []
    return [(str(band_names[i]), float(low[0, i])) for i in np.flatnonzero(flat)]


def warn_constant_bands(records: Sequence[Any], band_names: Sequence[str]) -> None:
    """One warning naming the bands of one value in every file (:func:`constant_bands`), with what to do."""
    flat = constant_bands(records, band_names)
    if flat:
        shown = ", ".join(f"{n} ({v:g})" for n, v in flat[:6]) + (f" and {len(flat) - 6} more" if len(flat) > 6 else "")
        log.warning("warning: %d band(s) hold one value in every file: %s. Bad bands (an ENVI cube's bbl list, water "
                    "absorption, a dead detector) carry nothing to learn; leave them out of the files (gdal_translate "
                    "-b 1 -b 2 ... keeps the bands listed).", len(flat), shown)
