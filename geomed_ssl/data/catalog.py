"""Scan a folder of GeoTIFFs or NIfTI volumes: header metadata, a cheap validity estimate, and problems with reasons.

Each file is probed by ``geomed_ssl.data.probe``: its header plus one bounded preview read (a strided whole read of
small rasters, an overview or a few sampled blocks of large ones; volumes strided to ~64 voxels a side). Bad files
are never dropped silently: each becomes a ``Problem(path, reason)`` that ``scan`` skips (default) or raises on
(``strict=True``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fnmatch
import itertools
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from geomed_ssl.config import DataConfig, as_tuple, spatial_dims
from geomed_ssl.bands.names import resolve_band_info
from geomed_ssl.bands.conform import conform_record, report_positional_names
from geomed_ssl.data.probe import (RASTER_PREVIEW, VOLUME_PREVIEW, FileProbe, ProbeError, probe_file,  # noqa: F401
                                  reordered)
from geomed_ssl.geo.grids import grid_diffs
from geomed_ssl.data.listing import EXTENSIONS, has_ext, list_files, once, unread_formats
from geomed_ssl.data.survey import grid_lines
from geomed_ssl.errors import DataError

log = logging.getLogger("geomed_ssl")


@dataclass
class FileRecord:
    """One usable sample source: a file, or several single-channel files stacked by ``data.channels``.

    ``shape`` is the spatial shape (H, W) of a raster or (X, Y, Z) of a volume in the FILE's array order (the volume
    reader reorients to RAS; ``orientation`` holds the file's axis codes). ``value_range`` is, per band,
    [min, p1, p99, max] of the valid pixels of the preview read (see ``geomed_ssl.data.probe``). ``band_source``
    says where the band names came from (``geomed_ssl.bands.names.BAND_SOURCES``), ``bandwidths`` are the bands'
    FWHM in µm (None: unknown). ``band_index`` (set by :func:`conform_record`): the readers return these of the
    file's bands, in this order, and every per-band field describes them.
    """

    path: str
    paths: list[str]
    kind: str
    shape: tuple[int, ...]
    num_bands: int
    dtype: str
    band_names: list[str]
    wavelengths: list[float | None] | None
    nodata: float | None
    crs: str | None = None
    transform: list[float] | None = None
    affine: list[list[float]] | None = None
    spacing: list[float] | None = None
    valid_fraction: float = 1.0
    block_shape: tuple[int, int] | None = None
    orientation: str | None = None
    value_range: list[list[float]] | None = None
    band_source: str | None = None
    bandwidths: list[float | None] | None = None
    band_index: list[int] | None = None
    value_scaling: list[list[float]] | None = None  # [scales, offsets] per band when not 1 / 0 (not applied)

    @property
    def area(self) -> int:
        """Number of pixels / voxels."""
        return int(np.prod(self.shape))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"shape": list(self.shape),
                                           "block_shape": list(self.block_shape) if self.block_shape else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileRecord:
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        d["block_shape"] = tuple(d["block_shape"]) if d.get("block_shape") else None
        return cls(**d)


def reoriented_shape(record: FileRecord, axcodes: str = "RAS") -> tuple[int, ...]:
    """A volume's spatial shape after reorientation to ``axcodes`` (the volume reader's order before resampling)."""
    return tuple(int(v) for v in reoriented_axes(record, record.shape, axcodes))


def reoriented_axes(record: FileRecord, values: Sequence[Any], axcodes: str = "RAS") -> tuple[Any, ...]:
    """Per-axis ``values`` of a volume in its file's axis order (shape, voxel sizes) in ``axcodes`` order."""
    if record.kind != "volume" or not record.orientation:
        return tuple(values)
    return reordered(record.orientation, values, axcodes)


@dataclass
class Problem:
    """A file (or folder, for stacked channels) that cannot be used, and why."""

    path: str
    reason: str

    def __post_init__(self) -> None:
        self.reason = self.reason.rstrip(". ")  # messages add their own full stop

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


_PROBLEMS_REPORTED: contextvars.ContextVar[bool] = contextvars.ContextVar("problems_reported", default=False)


def reported_already() -> bool:
    """Inside :func:`problems_reported`: the data's problems were said by the command already."""
    return _PROBLEMS_REPORTED.get()


@contextlib.contextmanager
def problems_reported() -> Iterator[None]:
    """Inside: the data's problem files were named already (compare's fine-tunes read the data compare read)."""
    token = _PROBLEMS_REPORTED.set(True)
    try:
        yield
    finally:
        _PROBLEMS_REPORTED.reset(token)


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

    def weights(self) -> np.ndarray:
        """Sampling probability per record, proportional to area * valid_fraction."""
        w = np.array([r.area * max(r.valid_fraction, 0.0) for r in self.records], dtype=np.float64)
        if w.sum() <= 0:
            raise DataError("the catalog has no valid pixels to sample from; check data.nodata.")
        return w / w.sum()

    def distinct_windows(self, window: Sequence[int], spacing: Sequence[float] | None = None) -> int:
        """How many non-overlapping ``window``s the records hold (at least one per record; volumes at ``spacing``
        mm when given, as the reader resamples them): the number of different samples, for sizes that must not
        exceed it (a negative queue)."""
        total = 0
        for r in self.records:
            shape = reoriented_shape(r) if r.kind == "volume" else tuple(r.shape)
            if spacing is not None and r.spacing:  # r.spacing is in the file's axis order, shape in RAS order
                shape = tuple(n * s / t for n, s, t in zip(shape, reoriented_axes(r, r.spacing), spacing))
            total += max(1, int(np.prod([max(1, int(n // w)) for n, w in zip(shape, window)])))
        return total

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root) if self.root and Path(path).is_relative_to(self.root) else path

    def warn_problems(self) -> None:
        """The problem files a command skips, as one warning (``--strict`` makes them an error instead); nothing
        inside :func:`problems_reported` (the same files read again by a step of a command that named them)."""
        if self.problems and not _PROBLEMS_REPORTED.get():
            log.warning("warning: %d problem file(s) skipped (--strict makes this an error):\n%s", len(self.problems),
                        "\n".join(f"  - {self._rel(p.path)}: {p.reason}" for p in self.problems))

    def summary(self) -> str:
        """A short human-readable report: usable files, bands, shapes, validity and every problem."""
        n = len(self.records)
        unit = "volume" if self.kind == "volume" else "raster"
        lines = [f"{n} usable {unit} file{'s' if n != 1 else ''}" + (f" under {self.root}" if self.root else "")
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


# -- matching ---------------------------------------------------------------------------------------------------
def glob_match(rel_path: str, pattern: str) -> bool:
    """fnmatch on a '/'-separated relative path, case-insensitive; ``**/`` also matches zero folders, and a pattern
    without '/' is also tried against the file name alone."""
    rel, pattern = rel_path.replace(os.sep, "/").lower(), pattern.lower()
    parts = pattern.split("**/")
    for keep in itertools.product((True, False), repeat=min(len(parts) - 1, 6)):
        variant = parts[0] + "".join(("**/" if k else "") + p for k, p in zip(keep, parts[1:]))
        if fnmatch.fnmatchcase(rel, variant):
            return True
    return "/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)


def select(rel_paths: Sequence[str], include: Sequence[str], exclude: Sequence[str], root: str | Path) -> list[bool]:
    """Which of ``rel_paths`` (relative to ``root``) ``include`` / ``exclude`` keep. Files that include keeps and
    a name pattern (no '/') leaves out only because a folder of theirs matches it (``Unlabelled/`` under
    ``*label*``) are one warning naming those folders: such a folder is more often data than labels. A folder whose
    files share the kept images' names (``labels/`` beside ``images/``) holds labels: nothing to say."""
    keep, hidden = [], {}
    for rel in rel_paths:
        included = any(glob_match(rel, g) for g in include)
        excluded = [g for g in exclude if glob_match(rel, g)]
        keep.append(included and not excluded)
        unix = rel.replace(os.sep, "/")
        name = unix.rsplit("/", 1)[-1]
        if included and excluded and "/" in unix and all("/" not in g and not glob_match(name, g) for g in excluded):
            hidden.setdefault(unix.rsplit("/", 1)[0], []).append(name.lower())
    kept_names = {r.replace(os.sep, "/").rsplit("/", 1)[-1].lower() for r, k in zip(rel_paths, keep) if k}
    data_like = sorted(f for f, names in hidden.items() if not kept_names & set(names))
    if data_like and not _PROBLEMS_REPORTED.get():
        shown = ", ".join(f"'{f}' ({len(hidden[f])} file{'s' if len(hidden[f]) != 1 else ''})"
                          for f in data_like[:3]) + (", ..." if len(data_like) > 3 else "")
        log.warning(f"warning: data.exclude {list(exclude)} leaves out folder(s) under '{root}' because their names "
                    f"match, not their files': {shown}; if they are data, rename them or give data.exclude patterns "
                    "that match only the label files' names (e.g. \"*_mask.tif\").")
    return keep


# what the shipped recipes' data.exclude leaves out: label maps and masks kept beside the images
LABEL_GLOBS = ["*mask*", "*label*", "*lulc*", "*_gt*", "*seg*", "*OTMultiClass*"]



# -- stacking ---------------------------------------------------------------------------------------------------
def _grid_difference(a: FileProbe, b: FileProbe, kind: str) -> str | None:
    """What differs between two channel files' grids (None: one grid): shape, or the affine (volumes: how far,
    and the orientations), or the CRS / transform (rasters)."""
    if a.shape != b.shape:
        return f"shapes {'x'.join(map(str, a.shape))} and {'x'.join(map(str, b.shape))}"
    if kind == "volume":
        if np.allclose(a.geo["affine"], b.geo["affine"], atol=1e-4):
            return None
        gap = float(np.abs(np.asarray(a.geo["affine"]) - np.asarray(b.geo["affine"])).max())
        return (f"affines differing by up to {gap:.4g} (orientations {a.geo.get('orientation')} and "
                f"{b.geo.get('orientation')})")
    diffs = grid_diffs(a.shape[-2:], a.geo["crs"], a.geo["transform"], b.shape[-2:], b.geo["crs"],
                       b.geo["transform"])
    return ", ".join(diffs) or None


def _channel_name(pattern: str) -> str:
    name = "".join(c for c in pattern.rsplit("/", 1)[-1] if c not in "*?[]").strip("._-")
    return name or pattern


def _valid_fraction(probes: list[FileProbe]) -> float:
    """Valid fraction of the stack: pixels valid in every channel file when their previews cover the same pixels,
    else (channel files sampled differently, e.g. other block layouts) the lowest fraction of any file."""
    masks = [p.valid for p in probes]
    same = all(m.shape == masks[0].shape and p.preview == probes[0].preview
               and p.geo.get("block_shape") == probes[0].geo.get("block_shape") for p, m in zip(probes, masks))
    if same:
        valid = np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]
        return float(valid.mean()) if valid.size else 0.0
    return min(float(m.mean()) if m.size else 0.0 for m in masks)


_alpha_noted: set[tuple[int, ...]] = set()  # alpha band positions already noted


def _note_alpha(path: str, bands: list[int]) -> None:
    """Say once per layout that the alpha bands at ``bands`` (1-based) are read as the mask, not as bands."""
    if tuple(bands) not in _alpha_noted:
        _alpha_noted.add(tuple(bands))
        log.info("note: band %s of '%s' (and of files like it) is an alpha band: read as the mask of missing pixels, "
                 "not as a band to learn from", ", ".join(map(str, bands)), path)


def _record(probes: list[FileProbe], kind: str, data_cfg: Any, fallback: list[str] | None = None) -> FileRecord:
    """Stack probes (one, or one per channel) into a FileRecord; raises ProbeError."""
    first = probes[0]
    fraction = _valid_fraction(probes)
    if fraction == 0.0:
        nd = f"nodata={first.nodata:g}" if first.nodata is not None else "no nodata value set"
        raise ProbeError(f"all pixels are nodata or NaN ({nd}, estimated from a decimated read)")
    descriptions, tags, alpha, scales, offsets = [], [], [], [], []  # every band of the stack, file after file
    for p in probes:
        masks = set(p.geo.get("alpha_bands") or [])
        s, o = p.geo.get("value_scaling") or ([1.0] * p.num_bands, [0.0] * p.num_bands)  # 1 / 0: none
        descriptions += p.descriptions
        tags += [p.tags.get(b + 1, {}) for b in range(p.num_bands)]
        alpha += [b in masks for b in range(p.num_bands)]
        scales, offsets = scales + list(s), offsets + list(o)
    keep = [i for i, a in enumerate(alpha) if not a]  # the bands read: alpha bands are a mask, not bands to learn
    hidden = [i + 1 for i, a in enumerate(alpha) if a]

    def pick(seq: list[Any]) -> list[Any]:
        return [seq[i] for i in keep]

    try:
        bands = resolve_band_info(len(keep), pick(descriptions), dict(enumerate(pick(tags), start=1)), data_cfg,
                                  first.path, fallback_names=fallback)
    except DataError as err:
        alpha_text = (f" (not counting its alpha band {', '.join(map(str, hidden))}: the mask of missing pixels)"
                      if hidden else "")
        raise ProbeError(str(err).replace(f"'{first.path}' ", "", 1) + alpha_text) from None
    if hidden:
        _note_alpha(first.path, hidden)
    scales, offsets = pick(scales), pick(offsets)
    scaling = None if all(v == 1 for v in scales) and all(v == 0 for v in offsets) else [scales, offsets]
    return FileRecord(
        path=first.path, paths=[p.path for p in probes], kind=kind, shape=tuple(first.shape), num_bands=len(keep),
        dtype=str(np.result_type(*[p.dtype for p in probes])), band_names=bands.names, wavelengths=bands.wavelengths,
        nodata=first.nodata, band_source=bands.source, bandwidths=bands.bandwidths,
        crs=first.geo.get("crs"), transform=first.geo.get("transform"), affine=first.geo.get("affine"),
        spacing=first.geo.get("spacing"), valid_fraction=round(fraction, 6), block_shape=first.geo.get("block_shape"),
        orientation=first.geo.get("orientation"), value_range=pick([v for p in probes for v in p.value_range]),
        value_scaling=scaling, band_index=keep if hidden else None,
    )


def _stacked_records(files: list[str], root: Path, kind: str, data_cfg: Any, window: tuple[int, ...],
                     problems: list[Problem]) -> list[FileRecord]:
    """One record per folder whose file NAMES match every ``data.channels`` glob exactly once (in glob order)."""
    channels = list(data_cfg.channels)
    folders: dict[str, list[str]] = {}
    for f in files:
        folders.setdefault(os.path.dirname(f), []).append(f)
    records = []
    for folder, members in sorted(folders.items()):
        matches = [[f for f in members if glob_match(os.path.basename(f), g)] for g in channels]
        if not any(matches):
            continue  # a folder with none of the channels (e.g. labels only)
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
                                            f"({', '.join(os.path.basename(f) for f in m)}); make it specific"))
            continue
        try:
            probes = []
            for (path,) in matches:
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
            records.append(_record(probes, kind, data_cfg, fallback))
        except ProbeError as bad:
            problems.append(Problem(folder, str(bad)))
    return records


def _majority(records: list[FileRecord], problems: list[Problem]) -> list[FileRecord]:
    """Keep the records with the most common band count, then the most common band names (files holding the same
    bands in another order are kept, read by name in that order); the rest are problems."""
    counts = Counter(r.num_bands for r in records)
    best = max(counts, key=lambda c: (counts[c], c))
    kept = []
    for r in records:
        if r.num_bands != best:
            why = f"{counts[best]} of {len(records)} files have {best} (the most common count)"
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
            problems.append(Problem(r.path, f"holds other band names ({' '.join(r.band_names)}) than most files "
                                            f"({' '.join(top)}); {fix}"))
    if reordered:
        log.info("note: %d file(s) store the same bands as the others in another order ('%s'%s); they are read by "
                 "name in the others' order (%s)", len(reordered), reordered[0], ", ..." if len(reordered) > 1 else "",
                 " ".join(top))
    return out


def scan(root: str | Path, data_cfg: Any = None, strict: bool = False, names_by_position: str = "warn",
         majority: bool = True) -> Catalog:
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
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist; check the path given for the data.")
    data_cfg = DataConfig() if data_cfg is None else data_cfg
    kind = data_cfg.kind
    if kind not in EXTENSIONS:
        raise DataError(f"data.kind must be 'raster' or 'volume', got '{kind}'.")
    window = as_tuple(data_cfg.patch_size, spatial_dims(data_cfg), "data.patch_size")
    base = root if root.is_dir() else root.parent
    all_files = list_files(root)
    typed = [str(p) for p in all_files if has_ext(p.name, kind)]
    include, exclude = list(data_cfg.include or ["**/*"]), list(data_cfg.exclude or [])
    unread = unread_formats([p for p in all_files if root.is_file() or (
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
        records = _stacked_records(files, base, kind, data_cfg, window, problems)
    else:
        records = []
        for f in files:
            try:
                records.append(_record([probe_file(f, kind, data_cfg, window)], kind, data_cfg))
            except ProbeError as bad:
                problems.append(Problem(f, str(bad)))
    if records and majority:
        records = _majority(records, problems)
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
    return catalog


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
                    "as stored, so the same value on the ground reads as different numbers: convert the files to "
                    "one scale first (e.g. gdal_translate -unscale -ot Float32), or train on one group at a time.")
