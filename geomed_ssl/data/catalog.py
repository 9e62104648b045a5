"""Scan a folder of GeoTIFFs or NIfTI volumes: header metadata, a cheap validity estimate, and problems with reasons.

Each file is probed by ``geomed_ssl.data.probe``: its header plus one bounded preview read (a strided whole read of
small rasters, an overview or a few sampled blocks of large ones; volumes strided to ~64 voxels a side). Bad files
are never dropped silently: each becomes a ``Problem(path, reason)`` that ``scan`` skips (default) or raises on
(``strict=True``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.config import DataConfig, as_tuple, spatial_dims
from geomed_ssl.bands.conform import conform_record, report_positional_names
from geomed_ssl.bands.matching import sensor_outliers
from geomed_ssl.bands.matching import brief
from geomed_ssl.data.probe import RASTER_PREVIEW, VOLUME_PREVIEW, FileProbe, ProbeError, probe_file  # noqa: F401
from geomed_ssl.geo.grids import grid_diffs
from geomed_ssl.geo.voxels import GRID_TOLERANCE, grid_gap
from geomed_ssl.files.cases import case_name, group_cases, is_case_file
from geomed_ssl.files.listing import (EXTENSIONS, LABEL_GLOBS, QUALITY_GLOBS, absolute, glob_match,  # noqa: F401
                                    has_ext, list_files, once, problems_reported, reported_already, select, trained_on,
                                    unread_formats)
from geomed_ssl.data.records import (BLANK_VOLUMES, FileRecord, Problem, blank_volumes, is_blank,  # noqa: F401
                                    record_from_probes, reoriented_axes, reoriented_shape)
from geomed_ssl.data.survey import grid_lines
from geomed_ssl.errors import DataError

log = logging.getLogger("geomed_ssl")


@dataclass
class Catalog:
    """The usable records of a scan, the problems found, and the band set shared by all records."""

    records: list[FileRecord]
    problems: list[Problem]
    kind: str
    band_names: list[str]
    wavelengths: list[float | None] | None
    root: str | None = None
    bandwidths: list[float | None] | None = None
    excluded: list[str] = dataclasses.field(default_factory=list)  # files data.exclude left out (paths from root)

    def __len__(self) -> int:
        return len(self.records)

    def weights(self, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Sampling probability per record, proportional to area * valid_fraction (volumes: their voxels at
        ``spacing`` mm when given, as the reader resamples them, so a thin-slice scan is not drawn more often than a
        thick-slice one of the same body)."""
        w = self.valid_areas(spacing)
        if w.sum() <= 0:
            raise DataError("the catalog has no valid pixels to sample from; check data.nodata.")
        return w / w.sum()

    def valid_areas(self, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Each record's valid pixels / voxels as sampled (its area at ``spacing``, :meth:`_sampled_shape`, times its
        valid fraction as the scan estimated it), float64."""
        return np.array([np.prod(self._sampled_shape(r, spacing)) * max(r.valid_fraction, 0.0) for r in self.records],
                        dtype=np.float64)

    @staticmethod
    def _sampled_shape(r: FileRecord, spacing: Sequence[float] | None) -> tuple[float, ...]:
        """A record's spatial shape as sampled: volumes in RAS order, at ``spacing`` mm when given."""
        shape = reoriented_shape(r) if r.kind == "volume" else tuple(r.shape)
        if spacing is not None and r.spacing and r.kind == "volume":  # r.spacing: the file's axis order
            shape = tuple(n * s / t for n, s, t in zip(shape, reoriented_axes(r, r.spacing), spacing))
        return shape

    def distinct_windows(self, window: Sequence[int], spacing: Sequence[float] | None = None) -> int:
        """How many non-overlapping ``window``s the records hold (at least one per record; volumes at ``spacing``
        mm when given, as the reader resamples them): the number of different samples, for sizes that must not
        exceed it (a negative queue)."""
        return sum(max(1, int(np.prod([max(1, int(n // w)) for n, w in zip(self._sampled_shape(r, spacing), window)])))
                   for r in self.records)

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root) if self.root and Path(path).is_relative_to(self.root) else path

    def warn_problems(self) -> None:
        """The problem files a command skips, as one warning (``--strict`` makes them an error instead); nothing
        inside :func:`problems_reported` (the same files read again by a step of a command that named them)."""
        if self.problems and not reported_already():
            log.warning("warning: %d problem file(s) skipped (--strict makes this an error):\n%s", len(self.problems),
                        "\n".join(f"  - {self._rel(p.path)}: {p.reason}" for p in self.problems))
        blank = blank_volumes(self.records)
        if blank and not reported_already():
            log.warning(BLANK_VOLUMES, len(blank), blank[0])

    def summary(self) -> str:
        """A short human-readable report: usable files, bands, shapes, validity and every problem."""
        n = len(self.records)
        unit = "volume" if self.kind == "volume" else "raster"
        files, cases = sum(len(r.paths) for r in self.records), sum(bool(r.case) for r in self.records)
        plural = "s" if n != 1 else ""
        what = f"{unit} file{plural}"
        if files > n:  # data.channels stacks
            what = (f"{unit} sample{plural} (stacked from {files} files by data.channels"
                    + (f"; {cases} of them cases of a shared folder" if cases else "") + ")")
        lines = [f"{n} usable {what}" + (f" under {self.root}" if self.root else "")
                 + (f", {len(self.problems)} skipped with problems" if self.problems else "")]
        names = self.band_names
        bands = " ".join(names if len(names) <= 24 else [*names[:8], "...", *names[-4:]])
        if self.wavelengths and any(w is not None for w in self.wavelengths):
            known = [w for w in self.wavelengths if w is not None]
            bands += f"  (centres {min(known):.3g}-{max(known):.3g} µm, {len(known)} known)"
        if self.records and self.records[0].band_source == "sensor":
            bands += "  (names by POSITION from the sensor profile: the files carry no band descriptions)"
        lines.append(f"  bands ({len(self.band_names)}): {bands}")
        if self.records:
            shapes = sorted({tuple(r.shape) for r in self.records}, key=lambda s: int(np.prod(s)))
            fmt = lambda s: "x".join(map(str, s))  # noqa: E731
            lines.append(f"  shapes: {fmt(shapes[0])}" + (f" .. {fmt(shapes[-1])}" if len(shapes) > 1 else "")
                         + f"; dtypes: {', '.join(sorted({r.dtype for r in self.records}))}")
            lines += grid_lines(self.records)
            vf = [r.valid_fraction for r in self.records]
            lines.append(f"  valid fraction: mean {np.mean(vf):.3f}, min {min(vf):.3f}")
            if self.kind != "volume":  # (nibabel applies a NIfTI's own scaling; volumes have no GDAL masks)
                lines.append("  " + _value_lines(self.records))
        if self.problems:
            lines.append(f"  problems ({len(self.problems)}):")
            lines += [f"    - {self._rel(p.path)}: {p.reason}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``from_dict`` restores it)."""
        return {"version": 1, "root": self.root, "kind": self.kind, "band_names": list(self.band_names),
                "wavelengths": self.wavelengths, "bandwidths": self.bandwidths,
                "records": [r.to_dict() for r in self.records],
                "problems": [dataclasses.asdict(p) for p in self.problems]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Catalog:
        return cls(records=[FileRecord.from_dict(r) for r in d["records"]],
                   problems=[Problem(**p) for p in d.get("problems", [])], kind=d["kind"],
                   band_names=list(d["band_names"]), wavelengths=d.get("wavelengths"), root=d.get("root"),
                   bandwidths=d.get("bandwidths"))


# -- stacking ---------------------------------------------------------------------------------------------------
def _grid_difference(a: FileProbe, b: FileProbe, kind: str) -> str | None:
    """What differs between two channel files' grids (None: one grid): shape, or the affine (volumes: how far,
    and the orientations), or the CRS / transform (rasters)."""
    if a.shape != b.shape:
        return f"shapes {'x'.join(map(str, a.shape))} and {'x'.join(map(str, b.shape))}"
    if kind == "volume":
        if grid_gap(a.shape[-3:], a.geo["affine"], b.geo["affine"]) <= GRID_TOLERANCE:
            return None
        gap = float(np.abs(np.asarray(a.geo["affine"]) - np.asarray(b.geo["affine"])).max())
        return (f"affines differing by up to {gap:.4g} (orientations {a.geo.get('orientation')} and "
                f"{b.geo.get('orientation')})")
    diffs = grid_diffs(a.shape[-2:], a.geo["crs"], a.geo["transform"], b.shape[-2:], b.geo["crs"], b.geo["transform"])
    return ", ".join(diffs) or None


def _channel_name(pattern: str) -> str:
    name = "".join(c for c in pattern.rsplit("/", 1)[-1] if c not in "*?[]").strip("._-")
    return name or pattern


def _stacked_records(files: list[str], root: Path, kind: str, data_cfg: Any, window: tuple[int, ...],
                     problems: list[Problem], only: str | None = None) -> list[FileRecord]:
    """One record per folder whose file NAMES match every ``data.channels`` glob exactly once (in glob order), or,
    where a glob matches several files of a folder, one per case of it (``geomed_ssl.files.cases``); with ``only``,
    just the stack that holds that file is probed (a case named by one of its files)."""
    channels = list(data_cfg.channels)
    folders: dict[str, list[str]] = {}
    for f in files:
        folders.setdefault(os.path.dirname(f), []).append(f)
    stacks: list[tuple[str, str | None, list[str]]] = []  # (folder, case, its file of each channel)
    for folder, members in sorted(folders.items()):
        matches = [[f for f in members if glob_match(os.path.basename(f), g)] for g in channels]
        if not any(matches):
            continue  # a folder with none of the channels (e.g. labels only)
        if len(channels) > 1 and any(len(m) > 1 for m in matches):  # several cases (nnU-Net's imagesTr)?
            cases, why = group_cases(members, channels)
            if cases or any(case is None for case, _ in why):  # else: one sample, a glob too wide (below)
                problems += [Problem(os.path.join(folder, case) if case else folder, line) for case, line in why]
                stacks += [(folder, case, paths) for case, paths in cases.items()]
                continue
        missing = [g for g, m in zip(channels, matches) if not m]
        if missing:
            found = ", ".join(os.path.basename(f) for f in members)
            problems.append(Problem(folder, f"missing channel {missing[0]!r} of data.channels {channels} "
                                            f"(files here: {found})"))
            continue
        many = [(g, m) for g, m in zip(channels, matches) if len(m) > 1]
        if many:
            g, m = many[0]
            problems.append(Problem(folder, f"channel glob {g!r} matches {len(m)} files "
                                            f"({', '.join(os.path.basename(f) for f in m[:3])}"
                                            f"{', ...' if len(m) > 3 else ''}); make it specific (data.channels "
                                            "stacks one sample per folder, or per case where two or more globs' "
                                            "wildcards name it: "
                                            "[*_0000.nii.gz, *_0001.nii.gz] for nnU-Net's case_000_0000.nii.gz; "
                                            "with one file per sample, leave data.channels unset)"))
            continue
        stacks.append((folder, None, [m[0] for m in matches]))
    records = []
    for folder, case, paths in stacks:
        if only is not None and only not in paths:
            continue
        try:
            probes = []
            for path in paths:
                try:
                    probes.append(probe_file(path, kind, data_cfg, window))
                except ProbeError as bad:
                    raise ProbeError(f"channel file {os.path.basename(path)} {bad}") from None
            grid = "voxel grid" if kind == "volume" else "pixel grid"
            for p in probes[1:]:
                differ = _grid_difference(probes[0], p, kind)
                if differ:
                    raise ProbeError(f"channel files {os.path.basename(probes[0].path)} and {os.path.basename(p.path)} "
                                     f"do not share one {grid}: {differ}; resample one onto the other's grid")
            names = [_channel_name(g) for g in channels]
            fallback = names if all(p.num_bands == 1 for p in probes) else None
            records.append(dataclasses.replace(record_from_probes(probes, kind, data_cfg, fallback), case=case))
        except ProbeError as bad:
            problems.append(Problem(os.path.join(folder, case) if case else folder, str(bad)))
    return records


def keep_majority(records: list[FileRecord], problems: list[Problem]) -> list[FileRecord]:
    """Keep the records with the most common band count, then the most common band names (files holding the same
    bands in another order are kept, read by name in that order); the rest are problems."""
    counts = Counter(r.num_bands for r in records)
    best = max(counts, key=lambda c: (counts[c], c))
    tied = sorted(c for c in counts if counts[c] == counts[best] and c > 1)  # single-band ones: label maps
    if len(tied) > 1:  # which are the images? (PlanetScope: 4-band scenes beside 8-band *_udm2 masks, one each)
        groups = "; ".join(f"{counts[c]} with {c} bands, e.g. '{next(r.path for r in records if r.num_bands == c)}'"
                           for c in tied)
        raise DataError(f"as many files hold one band count as another ({groups}), so which are the images is not "
                        "clear: keep them with data.include, or leave the others out with data.exclude (quality "
                        "masks beside the images, e.g. \"*_udm2*\").")
    kept = []
    for r in records:
        if r.num_bands != best:
            why = (f"{counts[best]} of {len(records)} files have {best} (the most common count)"
                   if counts[r.num_bands] < counts[best] else f"as many files have {best}, taken for the images")
            problems.append(Problem(r.path, f"has {r.num_bands} band(s) but {why}; mixed band counts, skipped"))
        else:
            kept.append(r)
    names = Counter(tuple(r.band_names) for r in kept)
    top = max(names, key=lambda n: names[n])
    out, reordered = [], []
    for r in kept:
        if tuple(r.band_names) == top:
            out.append(r)
        elif set(r.band_names) == set(top) and len(set(top)) == len(top):  # the same bands in another order
            out.append(conform_record(r, list(top)))
            reordered.append(r.path)
        else:
            fix = ("fix its band descriptions (a file's own names win over data.band_names) or leave it out "
                   "(data.exclude)" if r.band_source == "file"
                   else "fix data.band_names or the file, or leave it out (data.exclude)")
            problems.append(Problem(r.path, f"holds other band names ({brief(r.band_names)}) than most files "
                                            f"({brief(top)}); {fix}"))
    if reordered:
        log.info("note: %d file(s) store the same bands as the others in another order ('%s'%s); they are read by "
                 "name in the others' order (%s)", len(reordered), reordered[0], ", ..." if len(reordered) > 1 else "",
                 brief(top))
    return _one_sensor(out, list(top), problems)


def _one_sensor(records: list[FileRecord], names: list[str], problems: list[Problem]) -> list[FileRecord]:
    """The records whose bands lie where most files' bands of those names lie; the others are problems
    (``bands.matching.sensor_outliers``: another sensor's bands under the same names), never learnt as one sensor."""
    odd = sensor_outliers(names, [r.wavelengths for r in records])
    problems += [Problem(records[i].path, reason) for i, reason in odd.items()]
    return [r for i, r in enumerate(records) if i not in odd]


def scan(root: str | Path, data_cfg: Any = None, strict: bool = False, names_by_position: str = "warn",
         majority: bool = True, reader: str | None = None) -> Catalog:
    """Scan ``root`` (a folder, recursively, or one file) for ``data_cfg.kind`` files and build a Catalog
    (``data_cfg``: a recipe's ``data`` section, ``load_recipe(path).data``; None: the defaults, rasters).

    Problem files are skipped and listed in ``catalog.problems``; with ``strict`` any problem is a DataError.
    ``majority``: keep only the files with the most common band count and names (data that trains together);
    False where each file meets a model that reads its bands by name (predict, evaluate).
    Nothing usable is always a DataError that says what was found and which settings to check.
    Band names given to undescribed files by position from ``data.sensor``'s profile are logged as a warning
    (``names_by_position="warn"``), a DataError (``"error"``: the CLI's ``--strict``) or not mentioned
    (``"ignore"``, for files a command has already reported on).
    """
    root = absolute(root)
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist; check the path given for the data.")
    data_cfg = DataConfig() if data_cfg is None else data_cfg
    kind = data_cfg.kind
    if kind not in EXTENSIONS:
        raise DataError(f"data.kind must be 'raster' or 'volume', got '{kind}'.")
    window = as_tuple(data_cfg.patch_size, spatial_dims(data_cfg), "data.patch_size")
    base = root if root.is_dir() else root.parent
    case_file = is_case_file(root, data_cfg.channels)  # one channel file: its case, stacked with its folder's others
    all_files = [p for p in list_files(base) if p.parent == base] if case_file else list_files(root)
    typed = [str(p) for p in all_files if has_ext(p.name, kind)]
    include, exclude = list(data_cfg.include or ["**/*"]), list(data_cfg.exclude or [])
    unread = "" if case_file else unread_formats([p for p in all_files if root.is_file() or (
        any(glob_match(os.path.relpath(p, base), g) for g in include)
        and not any(glob_match(os.path.relpath(p, base), g) for g in exclude))], kind)  # data.exclude silences it
    if unread and root.is_file():
        raise DataError(f"cannot use '{root}': {unread}.")
    rels = [os.path.relpath(f, base) for f in typed]
    keep = select(rels, include, exclude, root)
    files = once([f for f, k in zip(typed, keep) if k], root)  # a file under two names (links): read once
    excluded = [r for r, k in zip(rels, keep) if not k and any(glob_match(r, g) for g in include)]

    problems: list[Problem] = []
    if data_cfg.channels:
        records = _stacked_records(files, base, kind, data_cfg, window, problems, str(root) if case_file else None)
    else:
        records = []
        for f in files:
            try:
                records.append(record_from_probes([probe_file(f, kind, data_cfg, window)], kind, data_cfg))
            except ProbeError as bad:
                problems.append(Problem(f, str(bad)))
    if case_file:  # records: its case's stack only (_stacked_records' ``only``); problems: its case's and folder's
        case = next(case_name(root.name, g) for g in data_cfg.channels if glob_match(root.name, g)) or ""
        ours = {str(base).lower(), os.path.join(base, case).lower()}
        problems = [p for p in problems if not records and p.path.lower() in ours]
    if records and majority:
        records = keep_majority(records, problems)
    problems.sort(key=lambda p: p.path)
    catalog = Catalog(records, problems, kind, list(records[0].band_names) if records else [],
                      records[0].wavelengths if records else None, root=str(base),
                      bandwidths=records[0].bandwidths if records else None, excluded=excluded)
    if not records and Path(root).is_file() and len(problems) == 1:  # one named file: say what is wrong with it
        raise DataError(f"cannot use '{root}': {problems[0].reason}.")
    if not records:
        other = "volume" if kind == "raster" else "raster"
        n_other = sum(has_ext(p.name, other) for p in all_files)
        found = f"{len(all_files)} file{'s' if len(all_files) != 1 else ''}"
        msg = (f"no usable {kind} files under '{root}': {found} found, {len(typed)} with "
               f"{'/'.join(EXTENSIONS[kind])}, {len(files)} left after data.include {include} and data.exclude "
               f"{exclude}" + (f", channels {data_cfg.channels}" if data_cfg.channels else "")
               + f"; {len(problems)} with problems.")
        if problems:
            msg += " Problems: " + "; ".join(str(p) for p in problems[:5]) + ("; ..." if len(problems) > 5 else ".")
        if data_cfg.channels and files and not problems:
            msg += f" No folder holds files whose names match data.channels {data_cfg.channels}."
        if n_other and not typed and reader:  # the kind is the model's, not a setting
            raise DataError(f"no {kind} files under '{root}', but {n_other} {other} file(s): "
                            f"{trained_on(reader, kind, other)}")
        if n_other and not typed:
            msg += f" Found {n_other} {other} files instead: set data.kind: {other}."
        if unread and not typed:
            raise DataError(f"{msg} {unread[0].upper()}{unread[1:]}.")
        raise DataError(msg + " Check data.kind, data.include, data.exclude and data.channels.")
    if unread and not reported_already():
        log.warning(f"warning: '{root}' holds {unread}.")
    if strict and problems:
        raise DataError(f"{len(problems)} problem file(s) under '{root}' (strict scan): "
                        + "; ".join(f"{catalog._rel(p.path)}: {p.reason}" for p in problems)
                        + ". Fix or exclude them (data.exclude), or run without --strict to skip them.")
    report_positional_names([r.path for r in records if r.band_source == "sensor"], getattr(data_cfg, "sensor", None),
                            catalog.band_names, names_by_position)
    warn_mixed_scaling(catalog)
    warn_replaced_nodata(catalog, data_cfg.nodata)
    return catalog


def _value_lines(records: Sequence[FileRecord]) -> str:
    """What the toolkit takes as missing and how it reads values: the nodata values (or none) and the scale / offset
    tags (not applied) over the files, with counts."""
    fmt = lambda r: (f"{r.nodata:g}" if r.nodata is not None else  # noqa: E731
                     "each channel file's own" if len(r.paths or []) > 1 else "none")  # (records.stack_nodata)
    nodata = Counter(fmt(r) for r in records)
    scaling = Counter("none" if r.value_scaling is None else
                      "scale " + "/".join(f"{v:g}" for v in sorted(set(r.value_scaling[0])))
                      + " offset " + "/".join(f"{v:g}" for v in sorted(set(r.value_scaling[1]))) for r in records)
    show = lambda c: ", ".join(k if len(c) == 1 else f"{k} ({n})" for k, n in c.most_common(4))  # noqa: E731
    return (f"nodata value: {show(nodata)} (NaN and GDAL-masked pixels are missing too); scale / offset tags: "
            f"{show(scaling)}"
            + (" (values read as stored)" if list(scaling) != ["none"] else ""))


def warn_replaced_nodata(catalog: Catalog, nodata: float | None) -> None:
    """One warning when ``data.nodata`` replaces the nodata value of files that hold it: their own fill is read as
    data (set to mend other files, it silently undid these files' tags)."""
    hit = [r for r in catalog.records if r.replaced_nodata is not None]
    if hit:
        more = f" (and {len(hit) - 1} more file(s))" if len(hit) > 1 else ""
        log.warning(f"warning: data.nodata={nodata:g} replaces the nodata value {hit[0].replaced_nodata:g} of "
                    f"'{catalog._rel(hit[0].path)}'{more}, whose pixels of {hit[0].replaced_nodata:g} are now read as "
                    "data. Give every file one fill value (gdal_translate -a_nodata, or rewrite the fill), or leave "
                    "data.nodata unset where the files' own tags are right.")


def warn_mixed_scaling(catalog: Catalog) -> None:
    """One warning when the files' scale / offset tags differ: values are read as stored, so the same physical
    value (a reflectance) would be two numbers far apart in one run's data (e.g. an archive with and without an
    offset)."""
    groups: dict[str, list[str]] = {}
    for r in catalog.records:
        key = "none (values as stored)" if r.value_scaling is None else \
            f"scales {r.value_scaling[0]} offsets {r.value_scaling[1]}"
        groups.setdefault(key, []).append(catalog._rel(r.path))
    if len(groups) > 1:
        shown = "; ".join(f"{key}: {len(paths)} file(s), e.g. {paths[0]}" for key, paths in groups.items())
        log.warning(f"warning: the files carry different scale / offset tags ({shown}). The toolkit reads values "
                    "as stored, so the same value on the ground reads as different numbers: convert every file to "
                    "one unit first (gdal_translate -unscale -ot Float32 applies a file's tags; an untagged file of "
                    "digital numbers needs the same tags set first, gdal_edit.py -scale S -offset O), or train on "
                    "one group at a time.")
