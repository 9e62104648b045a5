"""What a catalog's files have in common, and the files that stand out: the grids of a raster archive (CRSs and pixel
sizes, in ``inspect``'s summary, with a warning when the pixel sizes are mixed: UTM zones alone are not), files whose
values are far from the rest in some band (a fill value, another product level or scale factor), which would stretch
the normalisation statistics of every file, and volumes whose voxels are much longer along one axis. All work on what
the scan already read (headers and each file's sampled value range)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Sequence

import numpy as np

from geomed_ssl.bands.ranges import warn_constant_bands
from geomed_ssl.data.intensity import looks_like_ct, lowest_value
from geomed_ssl.data.records import BLANK_VOLUMES, blank_volumes
from geomed_ssl.geo.validity import HUGE_FILL
from geomed_ssl.geo.grids import crs_name
from geomed_ssl.geo.pixel_size import crs_units, pixel_size, size_groups

log = logging.getLogger("geomed_ssl")

FAR_SPANS = 5.0  # a file band this many archive spans (median p99 - median p1) above the archive ...
FAR_FACTOR = 10.0  # ... and this many times its magnitude is far (a fill value such as 65535 or 3e38)


def _counted(counts: Counter, limit: int = 4, unit: str = "file") -> str:
    items = [f"{k} ({n} {unit}{'s' if n != 1 else ''})" for k, n in counts.most_common(limit)]
    return ", ".join(items) + (f", and {len(counts) - limit} more" if len(counts) > limit else "")


def grid_counts(records: Sequence[Any]) -> tuple[Counter, Counter]:
    """How many raster files share each CRS (short names; 'none') and each pixel size (the CRS's units per pixel,
    within 3 %)."""
    rasters = [r for r in records if r.kind == "raster"]
    return Counter(crs_name(r.crs, "none") for r in rasters), size_groups([pixel_size(r) for r in rasters])


def grid_lines(records: Sequence[Any]) -> list[str]:
    """``inspect`` summary lines: the rasters' CRSs and pixel sizes; the volumes' voxel spacings (mm, within 3 %)
    and orientations (axis codes)."""
    crss, sizes = grid_counts(records)
    unit = "sample" if any(len(r.paths) > 1 for r in records) else "file"  # data.channels stacks files
    lines = [f"  CRS: {_counted(crss, unit=unit)}", f"  pixel size: {_counted(sizes, unit=unit)}"] if crss else []
    if any(r.kind == "raster" and crs_units(r.crs) == "°" for r in records):
        lines[-1] += " (degrees as metres on the ground at each file's centre)"
    volumes = [r for r in records if r.kind == "volume"]
    spaced = [(*map(float, r.spacing), "mm") for r in volumes if r.spacing]
    if spaced:
        lines.append("  voxel spacing: " + _counted(size_groups(spaced), unit=unit))
    if volumes:
        lines.append("  orientation: " + _counted(Counter(r.orientation or "unknown" for r in volumes), unit=unit))
    return lines


def value_outliers(records: Sequence[Any], band_names: Sequence[str]) -> list[tuple[str, list[int], str]]:
    """(path, bands, why) of the files whose sampled values stand out from the rest of the archive as a fill value
    does: constant in every band while the others vary (an all-zero file with no nodata set), a band constant at a
    value outside the archive's [median p1, median p99] widened by its span (65535, -9999), or a band wholly
    ``FAR_SPANS`` spans above it and ``FAR_FACTOR`` times its magnitude (3e38). A hazy date or a dark class is
    not one. Needs three files that hold the catalog's bands in its order."""
    recs = [r for r in records if r.value_range and list(r.band_names) == list(band_names)]
    if len(recs) < 3:
        return []
    lo = np.nanmedian(np.array([[row[1] for row in r.value_range] for r in recs], np.float64), axis=0)
    hi = np.nanmedian(np.array([[row[2] for row in r.value_range] for r in recs], np.float64), axis=0)
    span = hi - lo
    varies = bool(np.nanmax(span) > 0)
    out = []
    for r in recs:
        p1 = np.array([row[1] for row in r.value_range], np.float64)
        p99 = np.array([row[2] for row in r.value_range], np.float64)
        if varies and np.all(p1 == p99):
            out.append((r.path, list(range(len(p1))), f"constant ({p1[0]:.6g}) in every band"))
            continue
        far = []
        for i in range(len(p1)):
            if not (span[i] > 0 and np.isfinite(p1[i])):
                continue
            constant_outside = p1[i] == p99[i] and not lo[i] - span[i] <= p1[i] <= hi[i] + span[i]
            huge = p1[i] > hi[i] + FAR_SPANS * span[i] and abs(p1[i]) > FAR_FACTOR * max(abs(lo[i]), abs(hi[i]))
            if constant_outside or huge:
                far.append(i)
        if far:
            i = far[0]
            out.append((r.path, far, f"{band_names[i]} {p1[i]:.6g}..{p99[i]:.6g} where most files lie in "
                                     f"{lo[i]:.6g}..{hi[i]:.6g}"))
    return out


KNOWN_FILLS = (-9999.0, -32768.0, -32767.0)  # fill values of common tools, and any float fill near -FLT_MAX


def untagged_fill(value_range: Sequence[Sequence[float]]) -> float | None:
    """The value a file with no nodata tag seems to fill its collar with: at the 1st percentile of every band below
    its 99th, 0 (a dark class keeps some band above 0), or another value that is also every band's minimum and a
    fill value (:data:`KNOWN_FILLS`) or, in two bands or more, any (no measurement is the same in every band; one
    band's flat minimum can be ground: a lake in a DEM). None when there is none."""
    v = value_range[0][1]
    if not all(row[1] == v < row[2] for row in value_range):
        return None
    if v == 0:
        return 0.0
    known = v in KNOWN_FILLS or v <= -HUGE_FILL
    if all(row[0] == v for row in value_range) and (known or len(value_range) >= 2):
        return float(v)
    return None


UNIT_FACTOR = 1000.0  # files whose typical values differ this much are in different units (reflectance vs DN)


def unit_mismatch(records: Sequence[Any], band_names: Sequence[str]) -> list[tuple[float, Any]] | None:
    """[(level, file) of the smallest values, (level, file) of the largest] when multi-band rasters holding the same
    bands differ in magnitude by ``UNIT_FACTOR`` or more (the median over bands of each file's 99th percentile):
    reflectance beside digital numbers, whichever are more. A dark scene beside a bright one differs by a factor of
    ten or so."""
    level = []
    for r in records:  # rasters of several bands: volumes are scaled one by one, and one band may span 1000x (a DEM)
        if r.kind == "raster" and len(band_names) >= 2 and r.value_range and list(r.band_names) == list(band_names):
            top = [row[2] for row in r.value_range if np.isfinite(row[2]) and row[2] > 0]
            if top:
                level.append((float(np.median(top)), r))
    if len(level) < 2:
        return None
    low, high = min(level, key=lambda t: t[0]), max(level, key=lambda t: t[0])
    return [low, high] if high[0] >= UNIT_FACTOR * low[0] else None


ANISOTROPY = 3.0  # voxels this many times longer along one axis: windows and tokens are that much longer in mm
VOXEL_SPREAD = 1.5  # voxel sizes this far apart along an axis: the volumes show anatomy at different scales
ROTATION_SQUARE = 1.1  # a quarter turn in a plane of voxels this unequal changes what the voxels look like
MANY_FRAMES = 16  # more channels than this from 4D NIfTI (4th axis) look like a time series, not contrasts


def _mm(size: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in size)


def _per_axis(value: Any, n: int) -> tuple[int, ...] | None:
    """An int or per-axis list of voxel counts as ``n`` counts (None when it is neither)."""
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) and len(value) == n else None


def voxel_warnings(records: Sequence[Any], spacing: Sequence[float] | None = None,
                   rotation_axis: int | None = None, window: Sequence[int] | None = None,
                   tokens: Sequence[int] | None = None) -> list[str]:
    """Warnings about the voxels the volumes are read at (``spacing``, ``data.spacing``; else each volume's own, in
    RAS order): windows or tokens (``window``, ``tokens``: voxels per axis; cubes when not given) much longer in mm
    along one axis (thick slices read at their own grid), volumes of several voxel sizes read at their own grids,
    and for rotation prediction (``rotation_axis``) voxels unequal in the plane it turns in, where a quarter turn
    shows itself by the voxels' shape."""
    from geomed_ssl.data.records import reoriented_axes

    volumes = [r for r in records if r.kind == "volume" and r.spacing]
    if not volumes:
        return []
    sizes = Counter(tuple(round(float(v), 3) for v in (spacing or reoriented_axes(r, r.spacing))) for r in volumes)
    typical = sizes.most_common(1)[0][0]
    out = []

    window, tokens = _per_axis(window, len(typical)), _per_axis(tokens, len(typical))

    def extent(counts: Sequence[int] | None, size: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(float(c) * v for c, v in zip(counts or (1,) * len(size), size))

    def ratio(mm: Sequence[float]) -> float:
        return max(mm) / max(min(mm), 1e-9)

    shape = {size: max(ratio(extent(window, size)), ratio(extent(tokens, size))) for size in sizes}
    thick = {size: r for size, r in shape.items() if r > ANISOTROPY and ratio(size) > ANISOTROPY}
    if spacing is None and thick:  # the voxels make the windows long: reading at one voxel size mends it
        worst = max(thick, key=thick.get)
        n = sum(sizes[size] for size in thick)
        shapes = (f"windows are {_mm(extent(window, worst))} mm and tokens {_mm(extent(tokens, worst))} mm, "
                  if window and tokens else "windows and tokens are ")
        out.append(f"warning: {n} of {len(volumes)} volumes have voxels of {_mm(worst)} mm (R, A, S) and "
                   f"data.spacing is null: windows and tokens are cut in voxels, so there {shapes}up to "
                   f"{thick[worst]:.0f}x longer in mm along one axis, and much of a window can lie outside a thin "
                   "slab. Set data.spacing to read the volumes at one voxel size (not much finer than their thickest "
                   "slices: thin slices interpolated from thick ones add no detail), or give data.patch_size and "
                   "model.patch_size per axis, about equal in mm.")
    flat = {size: r for size, r in shape.items() if r > ANISOTROPY and (spacing is not None or size not in thick)}
    if window and tokens and flat:  # the sizes chosen make them long on voxels that are not
        worst = max(flat, key=flat.get)
        out.append(f"warning: data.patch_size {list(window)} and model.patch_size {list(tokens)} voxels give windows "
                   f"of {_mm(extent(window, worst))} mm and tokens of {_mm(extent(tokens, worst))} mm on voxels of "
                   f"{_mm(worst)} mm ({sum(sizes[k] for k in flat)} of {len(volumes)} volumes), {flat[worst]:.0f}x "
                   "longer along one axis: give per-axis sizes about equal in mm, unless that shape is meant.")
    spread = max(max(k[a] for k in sizes) / max(min(k[a] for k in sizes), 1e-9) for a in range(len(typical)))
    if spacing is None and spread > VOXEL_SPREAD:
        listed = _counted(Counter({f"{_mm(k)} mm": n for k, n in sizes.items()}), 3)
        out.append(f"warning: the volumes have several voxel sizes ({listed}) and data.spacing is null: windows are "
                   f"cut in voxels, so the model sees anatomy at several scales (up to {spread:.1f}x apart along "
                   "one axis). If that is not intended, set data.spacing to read them at one voxel size, or leave the "
                   "others out with data.exclude.")

    def square(axis: int) -> bool:
        a, b = (typical[i] for i in range(3) if i != axis)
        return max(a, b) / max(min(a, b), 1e-9) <= ROTATION_SQUARE

    if rotation_axis is not None and len(typical) == 3 and not square(rotation_axis):
        other = next((a for a in range(3) if square(a)), None)
        out.append(f"warning: rotation turns windows about axis {rotation_axis} (of R, A, S), in a plane of voxels "
                   f"of {_mm([typical[i] for i in range(3) if i != rotation_axis])} mm: a quarter turn changes how "
                   "the voxels look, which the model can learn to tell instead of the content. Set data.spacing to "
                   "equal voxel sides" + (f", or method.axis={other}, whose plane is square" if other is not None
                                          else "") + ".")
    return out


def warn_collars(ranges: Sequence[tuple[str, Sequence[Sequence[float]]]], fate: str,
                 setting: str = "set data.nodata=") -> None:
    """One warning for the rasters among ``ranges`` ((path, value_range) of files with no nodata value or mask)
    whose values look like a fill collar (:func:`untagged_fill`); ``fate``: what happens to it ("predicted");
    ``setting``: how the command is told the value ("give --nodata ")."""
    collars = [(path, v) for path, rng in ranges for v in [untagged_fill(rng)] if v is not None]
    if collars:  # an orthophoto's or a swath's fill outside its footprint, with no tag saying so
        path, v = collars[0]
        log.warning("warning: '%s'%s has %g at its 1st percentile in every band and no nodata value or mask: if that "
                    "is a no-data collar (outside an orthophoto's or a SAR swath's footprint), %s%g or tag the files "
                    "(gdal_edit.py -a_nodata %g), else it is %s as data.", path,
                    f" (and {len(collars) - 1} more file(s))" if len(collars) > 1 else "", v, setting, v, v, fate)


def not_ct(records: Sequence[Any]) -> list[tuple[str, float]]:
    """The volumes of ``records`` whose lowest value does not look like CT's (:func:`looks_like_ct`, the rule
    ``data.intensity: auto`` reads volumes by): their path and that value."""
    lows = [(r.path, lowest_value(r)) for r in records if r.kind == "volume"]
    return [(path, float(low)) for path, low in lows if low is not None and not looks_like_ct(low)]


def warn_survey(catalog: Any, spacing: Sequence[float] | None = None, rotation_axis: int | None = None,
                window: Sequence[int] | None = None, tokens: Sequence[int] | None = None,
                intensity: str | None = None, flat_bands: bool = False) -> None:
    """Warnings about the archive as a whole: rasters of several CRSs or pixel sizes, files whose values are far
    from the rest (:func:`value_outliers`), volumes' voxels (:func:`voxel_warnings`), blank volumes and, read as CT
    (``intensity``), volumes that do not look like CT (:func:`not_ct`), each with what to check; ``flat_bands``
    (``inspect``; pretraining's statistics say it from their own windows): bands of one value in every file."""
    if spacing is not None and getattr(catalog, "kind", None) == "raster":
        log.warning("warning: data.spacing %s is for volumes (resampled to it as they are read); rasters are read at "
                    "their own pixel size: resample them first (gdalwarp -tr X Y), or leave data.spacing out.",
                    list(spacing))
    for line in voxel_warnings(catalog.records, spacing, rotation_axis, window, tokens):
        log.warning(line)
    if blank := blank_volumes(catalog.records):
        log.warning(BLANK_VOLUMES, len(blank), blank[0])
    if frames := [r for r in catalog.records if r.kind == "volume" and r.num_bands > max(MANY_FRAMES, len(r.paths))]:
        log.warning("warning: '%s'%s reads as %d channels, from the 4th axis of 4D NIfTI: a time series (fMRI, "
                    "diffusion, perfusion) makes a model of that many channels. If they are not contrasts of one image "
                    "(FLAIR, T1, ...), split the file (fslsplit) and keep the volumes you want with data.include.",
                    frames[0].path, f" (and {len(frames) - 1} more)" if len(frames) > 1 else "", frames[0].num_bands)
    if intensity == "ct" and (unlike := not_ct(catalog.records)):
        path, low = unlike[0]
        log.warning("warning: %d volume(s) read as CT (data.intensity: ct) do not look like CT: '%s' reaches only "
                    "%.4g at its lowest, where CT's air is about -1000 HU. An MR scan, or CT stored without its "
                    "rescale to HU, loses its contrast clipped to data.ct_window: leave such files out (data.exclude, "
                    "data.include), or read MR with data.intensity: mr. A CT cropped inside the body (no air) is "
                    "right as it is.", len(unlike), path, low)
    _, sizes = grid_counts(catalog.records)
    sizes = Counter({k: n for k, n in sizes.items() if not k.endswith(" px")})  # no ground size to compare
    if len(sizes) > 1:
        log.warning("warning: the rasters have several pixel sizes (%s): windows are cut in pixels, so the model sees "
                    "the ground at several scales. If that is not intended, resample them onto one pixel size or "
                    "leave the others out with data.exclude.", _counted(sizes, 3))
    warn_collars([(r.path, r.value_range) for r in catalog.records
                  if r.kind == "raster" and r.nodata is None and r.value_range], "trained and scored")
    units = unit_mismatch(catalog.records, catalog.band_names)
    if units:
        (low, a), (high, b) = units
        log.warning("warning: the files' values differ by a factor of %.0f ('%s' reaches %.6g in a typical band, "
                    "'%s' %.6g): reflectance beside digital numbers, or another product level? One set of statistics "
                    "cannot normalise both (the smaller ones read as nearly constant). Convert every file to one "
                    "unit first (e.g. reflectance = DN / 10000), or leave one group out with data.exclude.",
                    high / low, a.path, low, b.path, high)
    if flat_bands:
        warn_constant_bands(catalog.records, catalog.band_names)
    odd = value_outliers(catalog.records, catalog.band_names)
    if odd:
        path, _, why = odd[0]
        more = f" and {len(odd) - 1} more file(s)" if len(odd) > 1 else ""
        log.warning("warning: '%s'%s hold values far from the rest of the archive (%s): they stretch the "
                    "normalisation statistics of every file. Check them (a fill value that should be data.nodata, "
                    "another product level or scale factor) or leave them out with data.exclude.", path, more, why)


def check_fillable(catalog: Any, window: Sequence[int], min_valid: float,
                   spacing: Sequence[float] | None = None) -> None:
    """A DataError when no file holds the valid pixels of one ``window`` at ``min_valid`` (its valid fraction, as
    the scan estimated it, times its area; a file under ``min_valid`` valid that is smaller than the need): every
    window would be drawn nearly blank and trained on (a folder nodata but for a corner trained with a loss of 0);
    so when every volume is blank (one value in every voxel). When only some files fall short, one warning names
    them."""
    from geomed_ssl.errors import DataError

    blank = blank_volumes(catalog.records)
    if blank and len(blank) == len(catalog.records):
        raise DataError(f"every volume holds one value in every voxel (blank scans?), e.g. '{blank[0]}': there is "
                        "nothing to learn from; check the files (an export that wrote zeros?) or give other data.")
    if min_valid <= 0 or not catalog.records:
        return
    need = min_valid * float(np.prod(window))
    have = list(zip(catalog.records, catalog.valid_areas(spacing).tolist()))
    short = [(r, n) for r, n in have if n < need and r.valid_fraction < min_valid]
    if not short:
        return
    r, n = max(short, key=lambda s: s[1])
    size = "x".join(str(int(w)) for w in window)
    if len(short) == len(have):
        raise DataError(f"no file holds enough valid pixels for one {size} window at data.min_valid_fraction "
                        f"{min_valid:g} (the most: '{r.path}', about {n:.0f} valid of the {need:.0f} a window needs; "
                        f"nodata {r.nodata}): check data.nodata, or lower data.patch_size or "
                        "data.min_valid_fraction.")
    log.warning("warning: %d of %d file(s) hold fewer valid pixels than one %s window at data.min_valid_fraction %g "
                "(e.g. '%s', about %.0f valid): their windows are mostly nodata; check data.nodata or leave them out "
                "with data.exclude.", len(short), len(have), size, min_valid, r.path, n)
