"""The files of a data folder: walked recursively with symlinked folders followed (each real folder once, so a link
loop ends), hidden files and the folders geomed-ssl wrote left out, and the files in image formats the toolkit does
not read named, with the conversion that makes them readable; which of them ``data.include`` / ``data.exclude``
keep (:func:`select`, :func:`glob_match`); and whether a command named the data's problems already
(:func:`problems_reported`)."""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

from geomed_ssl.outdirs import BOOKKEEPING, MANIFEST

log = logging.getLogger("geomed_ssl")
EXTENSIONS = {"raster": (".tif", ".tiff"), "volume": (".nii", ".nii.gz")}
KIND_WORDS = {"raster": ("a GeoTIFF raster", "2D GeoTIFF rasters"),
              "volume": ("a NIfTI volume", "3D NIfTI volumes")}
# Image formats users' archives hold that are not read, and how to convert them.
UNREAD = {
    "raster": ((".jp2", ".j2k", ".img", ".vrt", ".png", ".jpg", ".jpeg", ".bsq", ".bil", ".bip", ".nc", ".h5",
                ".hdf", ".he5", ".grd", ".asc", ".ecw", ".sid"),
               "convert them to GeoTIFF, e.g. `gdal_translate -of COG IN OUT.tif` (a .vrt mosaic becomes one scene; "
               "an ENVI cube is converted from its data file, the .hdr beside it, and its bad bands (bbl) are best "
               "left out: `gdal_translate -b 1 -b 2 ...`)"),
    "volume": ((".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".ima", ".img", ".npz"),
               "convert them to NIfTI, e.g. with nibabel, SimpleITK, or dcm2niix for DICOM series"),
}
# of UNREAD's, the formats only volumes come in (a folder of them is taken for volumes; .img is also ENVI's, .npz not
# an image format)
VOLUME_ONLY = (".dcm", ".ima", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd")


QUICKLOOKS = ("thumb", "quicklook", "browse")  # Landsat's *_thumb_small.jpeg, Sentinel-2's *_PVI / quicklooks


def trained_on(model: str, expected: str, found: str) -> str:
    """The end of the refusal of ``found`` files (raster / volume) given to ``model``, which reads ``expected``."""
    return (f"{model} was trained on {KIND_WORDS[expected][1]}; give it {expected} files, or use a model trained on "
            f"{found}s.")


def absolute(path: str | Path) -> Path:
    """``path`` made absolute with ``~`` expanded and ``..`` / ``.`` folded by name, symlinks kept
    (``os.path.abspath``): one folder given as ``../data`` from one place and ``data`` from another is then one string
    in a manifest."""
    return Path(os.path.abspath(Path(path).expanduser()))


def has_ext(name: str, kind: str) -> bool:
    """Whether a file name has one of ``kind``'s extensions (any case)."""
    return name.lower().endswith(EXTENSIONS[kind])


def _within(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walk(root: str | Path, skipped: list[str] | None = None,
         errors: list[OSError] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` that follows symlinked folders whose target lies outside ``root`` (archives link tiles in
    from other disks), visiting each real folder once. A link to a folder inside ``root`` is not followed when that
    folder is reached under its own name (not hidden; so ``data.include`` / ``data.exclude`` see its real path),
    nor one to a folder holding ``root`` (it would read files outside the data, or loop); such links are added to
    ``skipped``.
    Folders that cannot be listed are added to ``errors``. Callers may prune ``dirs`` in place, as with
    ``os.walk``."""
    top = os.path.realpath(root)
    seen: set[str] = set()  # real paths, not inode numbers: some network and cloud drives report 0 for every one
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=None if errors is None else errors.append):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for d in dirs:
            path = os.path.join(folder, d)
            if os.path.islink(path):
                target = os.path.realpath(path)
                inside = _within(target, top) and not any(  # reached under its own name unless hidden
                    part.startswith(".") for part in Path(os.path.relpath(target, top)).parts)
                if inside or _within(top, target):
                    if skipped is not None:
                        skipped.append(path)
                    continue
            keep.append(d)
        dirs[:] = keep
        yield folder, dirs, files


def made_by_us(folder: Path) -> bool:
    """A folder the toolkit wrote (it holds the manifest), or one reached through a link into such a folder."""
    try:
        if (folder / MANIFEST).is_file():
            return True
        return folder.is_symlink() and any((p / MANIFEST).is_file() for p in Path(os.path.realpath(folder)).parents)
    except OSError:  # a folder this user may not look into: not ours
        return False


def list_files(root: Path) -> list[Path]:
    """The files under ``root`` (or ``root`` itself), leaving out hidden files and folders (``.ipynb_checkpoints``,
    macOS ``._x.tif`` copies) and the subfolders the toolkit wrote (they hold ``.geomed-ssl.json``: a predict, embed
    or cluster folder placed inside the data must not be read back as data); each said once in the log, with the
    links :func:`walk` does not follow and the folders that cannot be listed (a warning). A file may be listed
    under several names (links, as datalad / git-annex datasets hold them): :func:`once` keeps one after the
    selection."""
    if root.is_file():
        return [root]
    out, skipped, hidden, links, errors = [], [], [], [], []
    for folder, dirs, files in walk(root, links, errors):
        ours = sorted(d for d in dirs if made_by_us(Path(folder) / d))
        skipped += [Path(folder) / d for d in ours]
        hidden += [Path(folder) / n for n in sorted(dirs) + sorted(files)
                   if n.startswith(".") and n not in BOOKKEEPING]
        dirs[:] = sorted(d for d in dirs if d not in ours and not d.startswith("."))
        out += [Path(folder) / f for f in sorted(files) if not f.startswith(".")]
    if hidden:
        log.info(f"skipped {len(hidden)} hidden file(s) / folder(s) under '{root}': "
                 + ", ".join(str(p.relative_to(root)) for p in hidden[:3]) + (", ..." if len(hidden) > 3 else ""))
    if skipped:
        log.info(f"skipped {len(skipped)} folder(s) under '{root}' that geomed-ssl wrote (outputs, not data): "
                 + ", ".join(str(d.relative_to(root)) for d in skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    if links:
        log.info(f"not followed: {len(links)} link(s) under '{root}' to folders inside it (read under their own "
                 "names) or holding it: " + ", ".join(os.path.relpath(p, root) for p in links[:3])
                 + (", ..." if len(links) > 3 else ""))
    if errors:
        log.warning(f"warning: {len(errors)} folder(s) under '{root}' could not be listed, so their files are not "
                    f"read: {errors[0].filename} ({errors[0].strerror})" + (", ..." if len(errors) > 1 else "")
                    + "; check their permissions.")
    return out


def once(paths: Sequence[str], where: str | Path) -> list[str]:
    """``paths`` with each real file once (the first of its names: links, as datalad / git-annex datasets hold
    them, give one file several), said in the log."""
    out, seen = [], set()
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)
    if len(out) < len(paths):
        log.info(f"{len(paths) - len(out)} file(s) under '{where}' are further names (links) of files listed "
                 "already; each file is read once.")
    return out


def unread_formats(files: Sequence[Path], kind: str) -> str | None:
    """What to say of the ``files`` in image formats that ``kind`` data could be kept in but the toolkit does not
    read (None: there are none): how many of each extension, and how to convert them."""
    extensions, advice = UNREAD[kind]
    files = [p for p in files if not any(w in p.name.lower() for w in QUICKLOOKS)]  # pictures of a scene, not data
    found = Counter(ext for p in files for ext in extensions if p.name.lower().endswith(ext))
    if kind == "volume":  # scanners name DICOM files IM0001 or by UID (1.2.840...5): told apart by content
        unnamed = [p for p in files if scanner_named(p)][:20]  # opened: a few
        found.update(["DICOM without .dcm"] * sum(map(is_dicom, unnamed)))
    else:  # ENVI cubes whose data file has no telling extension (.dat, none): known by their header
        found.update(["ENVI (.hdr and its data)"] * len(envi_cubes(files)))
    if not found:
        return None
    counts = ", ".join(f"{ext} {n}" for ext, n in sorted(found.items()))
    words = "GeoTIFF (.tif/.tiff)" if kind == "raster" else "NIfTI (.nii/.nii.gz)"
    total = sum(found.values())
    return (f"{total} file{'s' if total != 1 else ''} in formats not read ({counts}): geomed-ssl reads {kind}s as "
            f"{words}; {advice}" + (f" (or leave them out with data.exclude, e.g. \"*{min(found)}\")"
                                    if min(found).startswith(".") else ""))


ENVI_DATA = ("", ".dat", ".raw", ".bin", ".envi", ".rfl", ".refl")  # ENVI data files UNREAD's extensions miss


def envi_cubes(files: Sequence[Path]) -> list[Path]:
    """The ENVI headers of cubes among ``files`` (:func:`is_envi_header`) with a data file beside them (``x``,
    ``x.dat``, ``x.raw``, ``x.bin``, ... for ``x.hdr`` or ``x.EXT.hdr``; .img, .bsq ... are counted by their
    extension already); at most 200 headers are opened."""
    headers = [p for p in files if p.suffix.lower() == ".hdr"][:200]
    if not headers:
        return []
    data = [p for p in files if p.suffix.lower() in ENVI_DATA]
    beside = {(p.parent, p.name) for p in data} | {(p.parent, p.stem) for p in data}
    return [h for h in headers if (h.parent, h.stem) in beside and is_envi_header(h)]


def is_envi_header(path: Path) -> bool:
    """Whether ``path`` is the ENVI header of an image cube: its text starts with "ENVI" and its ``file type``, if
    given, is ``ENVI Standard`` (not a spectral library, nor the header ENVI writes for a TIFF it opened)."""
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("latin-1").lower()
    except OSError:
        return False
    kind = re.search(r"^\s*file type\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    return text.startswith("envi") and (kind is None or kind.group(1) == "envi standard")


def scanner_named(path: str | Path) -> bool:
    """Whether a file is named as scanners name DICOM files: no suffix (IM0001) or a number (a UID, 1.2.840...5)."""
    suffix = Path(path).suffix
    return not suffix or suffix[1:].isdigit()


def is_dicom(path: str | Path) -> bool:
    """Whether a file named as scanners name DICOM files (:func:`scanner_named`) is DICOM by its content: "DICM"
    after the 128-byte preamble."""
    if not scanner_named(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def analyze_image(path: str | Path) -> bool:
    """``path`` is the .img of an Analyze 7.5 volume: its .hdr beside it is the binary 348-byte header (an ENVI
    raster's .img has a text .hdr that starts with "ENVI")."""
    path = Path(path)
    if not path.name.lower().endswith(".img"):
        return False
    try:
        with open(path.with_suffix(".hdr"), "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and 348 in (int.from_bytes(head, "little"), int.from_bytes(head, "big"))


# -- reporting once ---------------------------------------------------------------------------------------------
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


# folders named as label folders are (TotalSegmentator's segmentations/, nnU-Net's labelsTr/): no warning
LABEL_FOLDERS = {"segmentations", "labels", "labelstr", "labelsts", "masks", "mask", "label", "seg", "gt"}


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
    data_like = sorted(f for f, names in hidden.items() if not kept_names & set(names)
                       and f.rsplit("/", 1)[-1].lower() not in LABEL_FOLDERS)
    if data_like and not _PROBLEMS_REPORTED.get():
        shown = ", ".join(f"'{f}' ({len(hidden[f])} file{'s' if len(hidden[f]) != 1 else ''})"
                          for f in data_like[:3]) + (", ..." if len(data_like) > 3 else "")
        log.warning(f"warning: data.exclude {list(exclude)} leaves out folder(s) under '{root}' because their names "
                    f"match, not their files': {shown}; if they are data, rename them or give data.exclude patterns "
                    "that match only the label files' names (e.g. \"*_mask.tif\").")
    return keep


# what the shipped recipes' data.exclude leaves out: label maps and masks kept beside the images
LABEL_GLOBS = ["*mask*", "*label*", "*lulc*", "*_gt*", "*seg*", "*OTMultiClass*"]
# Providers' quality and ancillary layers shipped beside the bands: PlanetScope UDM2; Landsat Collection 2 QA_PIXEL,
# QA_RADSAT, SR_QA_AEROSOL, ST_QA (Collection 1: BQA); Sentinel-2 L2A scene classification, cloud / snow
# probabilities, aerosol, water vapour and the true-colour preview. Left out by the raster recipes and by inspect.
QUALITY_GLOBS = ["*_udm*", "*_QA_*", "*_QA.*", "*_BQA*", "*_SCL_*", "*MSK_*", "*_AOT_*", "*_WVP_*", "*_TCI_*",
                 "*_TCI.*"]


def file_stamps(paths: Sequence[str]) -> list[list[int]]:
    """[size, modification time in ns] of each file: what tells a file replaced or rewritten in place since an
    output was computed from it (compare's rows, embed's parts)."""
    stamps = []
    for path in paths:
        st = os.stat(path)
        stamps.append([int(st.st_size), int(st.st_mtime_ns)])
    return stamps


def inputs_digest(settings: object, paths: Sequence[str]) -> str:
    """One string for ``settings`` (JSON-able) and the files ``paths`` with their sizes and modification times: what
    tells whether two processes (the ranks of a run) read the same inputs."""
    text = json.dumps([settings, list(paths), file_stamps(paths)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def content_sizes(paths: Sequence[str | Path]) -> str:
    """The sizes of ``paths`` as :func:`content_key` begins with them ("" when one cannot be read): a cheap first
    test before a file is hashed."""
    try:
        return ":".join(str(os.path.getsize(p)) for p in paths)
    except OSError:
        return ""


def content_key(paths: Sequence[str | Path]) -> str:
    """What byte-identical copies of the files ``paths`` (in order) share, wherever they lie and however they are
    named: their sizes and one SHA-256 of their bytes ("" when one cannot be read)."""
    digest = hashlib.sha256()
    try:
        for path in paths:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
    except OSError:
        return ""
    sizes = content_sizes(paths)
    return f"{sizes}:{digest.hexdigest()}" if sizes else ""
