"""The files of a data folder: walked recursively with symlinked folders followed (each real folder once, so a link
loop ends), hidden files and the folders geomed-ssl wrote left out, and the files in image formats the toolkit does
not read named, with the conversion that makes them readable."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

from geomed_ssl.outdirs import MANIFEST

log = logging.getLogger("geomed_ssl")
EXTENSIONS = {"raster": (".tif", ".tiff"), "volume": (".nii", ".nii.gz")}
# Image formats users' archives hold that are not read, and how to convert them.
UNREAD = {
    "raster": ((".jp2", ".j2k", ".img", ".vrt", ".png", ".jpg", ".jpeg", ".bsq", ".bil", ".bip", ".nc", ".h5",
                ".hdf", ".he5", ".grd", ".asc", ".ecw", ".sid"),
               "convert them to GeoTIFF, e.g. `gdal_translate -of COG IN OUT.tif` (a .vrt mosaic becomes one scene)"),
    "volume": ((".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".img", ".npz"),
               "convert them to NIfTI, e.g. with nibabel, SimpleITK, or dcm2niix for DICOM series"),
}


def has_ext(name: str, kind: str) -> bool:
    """Whether a file name has one of ``kind``'s extensions (any case)."""
    return name.lower().endswith(EXTENSIONS[kind])


def walk(root: str | Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` that follows symlinked folders (archives link tiles in from other disks), visiting each
    real folder once: a link back up the tree, or two links to one folder, never repeat files. Callers may prune
    ``dirs`` in place, as with ``os.walk``."""
    seen: set[str] = set()  # real paths, not inode numbers: some network and cloud drives report 0 for every one
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.normcase(os.path.realpath(folder))
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield folder, dirs, files


def list_files(root: Path) -> list[Path]:
    """The files under ``root`` (or ``root`` itself), leaving out hidden files and folders (``.ipynb_checkpoints``,
    macOS ``._x.tif`` copies) and the subfolders the toolkit wrote (they hold ``.geomed-ssl.json``: a predict, embed
    or cluster folder placed inside the data must not be read back as data); each said once in the log."""
    if root.is_file():
        return [root]
    out, skipped, hidden = [], [], []
    for folder, dirs, files in walk(root):
        ours = sorted(d for d in dirs if (Path(folder) / d / MANIFEST).is_file())
        skipped += [Path(folder) / d for d in ours]
        hidden += [Path(folder) / n for n in sorted(dirs) + sorted(files) if n.startswith(".") and n != MANIFEST]
        dirs[:] = sorted(d for d in dirs if d not in ours and not d.startswith("."))
        out += [Path(folder) / f for f in sorted(files) if not f.startswith(".")]
    if hidden:
        log.info(f"skipped {len(hidden)} hidden file(s) / folder(s) under '{root}': "
                 + ", ".join(str(p.relative_to(root)) for p in hidden[:3]) + (", ..." if len(hidden) > 3 else ""))
    if skipped:
        log.info(f"skipped {len(skipped)} folder(s) under '{root}' that geomed-ssl wrote (outputs, not data): "
                 + ", ".join(str(d.relative_to(root)) for d in skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    return out


def unread_formats(files: Sequence[Path], kind: str) -> str | None:
    """What to say of the ``files`` in image formats that ``kind`` data could be kept in but the toolkit does not
    read (None: there are none): how many of each extension, and how to convert them."""
    extensions, advice = UNREAD[kind]
    found = Counter(ext for p in files for ext in extensions if p.name.lower().endswith(ext))
    if not found:
        return None
    counts = ", ".join(f"{ext} {n}" for ext, n in sorted(found.items()))
    words = "GeoTIFF (.tif/.tiff)" if kind == "raster" else "NIfTI (.nii/.nii.gz)"
    total = sum(found.values())
    return (f"{total} file{'s' if total != 1 else ''} in formats not read ({counts}): geomed-ssl reads {kind}s as "
            f"{words}; {advice} (or leave them out with data.exclude, e.g. \"*{min(found)}\")")
