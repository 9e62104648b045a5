"""Images with one class each, for classification: a folder per class (:func:`scan_class_folders`), or a classes
table, a CSV whose rows name an image and its class (``image,class``), for archives whose class lives in a
spreadsheet rather than in folder names (a diagnosis per subject, a land-cover class per chip)."""

from __future__ import annotations

import dataclasses
import logging
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from geomed_ssl.bands.conform import report_positional_names
from geomed_ssl.data.catalog import FileRecord, keep_majority, reported_already, scan
from geomed_ssl.data.labelled import scan_class_folders, warn_copies
from geomed_ssl.errors import DataError
from geomed_ssl.files.listing import absolute
from geomed_ssl.labels.pairs import TABLE_SUFFIXES, image_index
from geomed_ssl.tables import LINE, FileIndex, read_rows

log = logging.getLogger("geomed_ssl")
WHAT = "classes CSV"


def is_class_table(data: str | Path) -> bool:
    """``data`` names a classes table (a CSV / TSV file) rather than a folder of class folders."""
    return Path(data).suffix.lower() in TABLE_SUFFIXES and not Path(data).is_dir()


def _rows(table: Path) -> list[dict[str, str]]:
    if not table.is_file():
        raise DataError(f"{WHAT} '{table}' does not exist; give a folder with one subfolder of images per class, or a "
                        "CSV with columns image,class.")
    rows = read_rows(table, ("image", "class"), WHAT)
    if not rows:
        raise DataError(f"{WHAT} '{table}' has a header and no rows: list one image,class row per image.")
    empty = next((r[LINE] for r in rows if not r["image"] or not r["class"]), None)
    if empty is not None:
        raise DataError(f"{WHAT} '{table}' line {empty}: empty image or class entry.")
    return rows


def _spelled(row: dict[str, str], key: str) -> str:
    return row[key].replace("\\", "/") if os.sep == "/" else row[key]


def _found(table: Path, image: str) -> Path | None:
    """The file or folder a row's image path names: absolute, or relative to the table's folder or the working
    folder (None: a bare name or the end of a path, found among the scanned images only)."""
    for candidate in (Path(image), table.parent / image, absolute(image)):
        if candidate.is_absolute() and candidate.exists():
            return candidate
    return None


def _folders(table: Path) -> list[str]:
    """The folders holding the images a classes table names by a path that exists (a stack named by its folder:
    that folder), each once; the table's own folder when it names none so (rows of file names alone)."""
    found = [_found(table, _spelled(r, "image")) for r in _rows(table)]
    folders = [os.path.normpath(f if f.is_dir() else f.parent) for f in found if f is not None]
    return list(dict.fromkeys(folders)) or [str(table.parent)]


def table_root(data: str | Path) -> Path | None:
    """The folder a classes table's images are scanned under, the deepest one holding every folder of
    :func:`_folders` (None for a folder of class folders); rows naming an image by a file name or the end of a path
    are matched among the images there. Images with no common folder but the file system's root are refused."""
    if not is_class_table(data):
        return None
    table = absolute(data)
    root = Path(os.path.commonpath(_folders(table)))
    if root == Path(root.anchor):
        raise DataError(f"{WHAT} '{table}' lists images in folders that share no folder but '{root}' (e.g. "
                        f"{', '.join(_folders(table)[:2])}): keep the images under one folder (links are fine).")
    return root


def class_inputs(data: str | Path | None) -> dict[str, Any]:
    """What classification data is, by role, for the output-folder rule: a folder of class folders, or a classes
    CSV and the folders of the images it lists (:func:`_folders`)."""
    if data is None or not is_class_table(data):
        return {"data folder": data}
    return {"classes CSV": data, "folder of the classes CSV's images": _folders(absolute(data))}


def whole_images(data_cfg: Any) -> Any:
    """``data_cfg`` for scanning images a classifier reads whole: a 1-pixel window, so no image is too small for
    it (a side shorter than one token is padded to one: :class:`~geomed_ssl.data.labelled.ImageDataset`)."""
    return dataclasses.replace(data_cfg, patch_size=[1] * (3 if data_cfg.kind == "volume" else 2))


def image_name(record: Any) -> str:
    """How tables name a classified image (``predictions.csv``, ``images.csv``): its file, or a ``data.channels``
    stack as commands take it (:func:`~geomed_ssl.data.records.stack_input`: its folder)."""
    from geomed_ssl.data.records import stack_input

    return stack_input(record) if len(record.paths) > 1 else record.path


def scan_classes(data: str | Path, data_cfg: Any, strict: bool = False, for_model: bool = False,
                 ) -> tuple[list[FileRecord], np.ndarray, list[str]]:
    """(records, class index per record (int64), class names, sorted) of a folder of class folders or of a classes
    table (:func:`scan_class_table`); the arguments are :func:`scan_class_folders`'. A classifier reads whole images
    of any size, so no window bounds them (:func:`whole_images`)."""
    data_cfg = whole_images(data_cfg)
    if is_class_table(data):
        return scan_class_table(data, data_cfg, strict, for_model)
    return scan_class_folders(data, data_cfg, strict, for_model)


def _listed(table: Path, scanned: Any) -> tuple[dict[str, tuple[str, str]], list[str], list[Any]]:
    """The table's rows matched to the ``scanned`` catalog: (image -> (class, line), rows naming no image read,
    problem files the rows name); an image listed with two classes is a DataError naming both lines."""
    index = image_index(scanned.records)
    trouble = {p.path: p for p in scanned.problems}
    troubled = FileIndex((p, p) for p in trouble)
    chosen: dict[str, tuple[str, str]] = {}
    unread, problems = [], []
    for row in _rows(table):
        i, image, name = row[LINE], _spelled(row, "image"), unicodedata.normalize("NFC", row["class"])
        key = index.find(image, (table.parent, ""), f"{WHAT} '{table}' line {i}", "matches {} images")
        if key is None:
            bad = troubled.find(image, (table.parent, ""), f"{WHAT} '{table}' line {i}", "matches {} images")
            if bad is not None:  # said with the problem files
                problems.append(trouble[bad])
            else:
                unread.append(f"line {i} ('{image}')")
        elif key in chosen and chosen[key][0] != name:
            raise DataError(f"{WHAT} '{table}' lists image '{key}' twice with different classes (line "
                            f"{chosen[key][1]}: '{chosen[key][0]}', line {i}: '{name}'); keep one row per image.")
        else:
            chosen[key] = (name, i)
    return chosen, unread, problems


def _check_spelling(table: Path, chosen: dict[str, tuple[str, str]]) -> None:
    """One class spelt in two ways that differ only in case ("Water", "water") is refused, naming the lines: it is
    one class typed twice, not two."""
    names = sorted({c for c, _ in chosen.values()})
    spelt = {c.casefold(): c for c in names}
    if len(spelt) == len(names):
        return
    twice = sorted((c for c in names if spelt[c.casefold()] != c), key=str.casefold)[0]
    first: dict[str, str] = {}
    for c, ln in sorted(chosen.values(), key=lambda v: int(v[1])):
        first.setdefault(c, ln)
    lines = [f"'{c}' (line {ln})" for c, ln in first.items() if c.casefold() == twice.casefold()]
    raise DataError(f"{WHAT} '{table}' spells one class in two ways that differ only in case ({', '.join(lines)}): "
                    "spell it alike on every row.")


def scan_class_table(data: str | Path, data_cfg: Any, strict: bool = False, for_model: bool = False,
                     ) -> tuple[list[FileRecord], np.ndarray, list[str]]:
    """The images a CSV with columns ``image,class`` lists, and their classes. An image path is absolute, relative
    to the CSV's folder or the working folder, or a file name / the end of a path under :func:`table_root` (a
    ``data.channels`` stack: its folder); the images there are scanned as a folder would be (problem files skipped
    with a warning, errors with ``strict``), and only the listed ones are used. A row naming no image read is warned
    about; an empty entry, or one image listed with two classes, is an error naming the line. The listed images
    alone decide the band set (as a folder's images do), and only their problems are said."""
    table = absolute(data)
    root = table_root(table)
    try:
        scanned = scan(root, data_cfg, names_by_position="ignore", majority=False)  # said below of the listed ones
    except DataError as err:
        if not any(_found(table, _spelled(r, "image")) for r in _rows(table)):  # file names alone, looked for here
            raise DataError(f"{err} {WHAT} '{table}' names its images by file name alone, so they are looked for "
                            "under its own folder: give their paths, absolute or relative to the CSV.") from None
        raise
    chosen, unread, problems = _listed(table, scanned)
    by_path = {r.path: r for r in scanned.records}
    kept = [by_path[p] for p in chosen]  # the images it lists alone decide the band set, as a folder's do
    left = len(scanned.records) - len(kept)
    kept = keep_majority(kept, problems) if kept and not for_model else kept
    catalog = dataclasses.replace(scanned, records=kept, problems=problems)
    if strict and problems:
        raise DataError(f"{len(problems)} problem file(s) among the images of {WHAT} '{table}' (strict scan): "
                        + "; ".join(f"{p.path}: {p.reason}" for p in problems) + ". Fix them or leave their rows out.")
    catalog.warn_problems()
    report_positional_names([r.path for r in kept if r.band_source == "sensor"], getattr(data_cfg, "sensor", None),
                            list(kept[0].band_names) if kept else [], "error" if strict else "warn")
    chosen, by_path = {r.path: chosen[r.path] for r in kept}, {r.path: r for r in kept}  # as keep_majority read them
    if unread:
        shown = "; ".join(unread[:4]) + (f"; and {len(unread) - 4} more" if len(unread) > 4 else "")
        log.warning(f"warning: {WHAT} '{table}': {len(unread)} row(s) name no image read under '{root}' ({shown}); "
                    "they are not used. Image paths are absolute, relative to the CSV's folder or the working "
                    "folder, or a file name / the end of a path under it; a missing file, or one data.include / "
                    "data.exclude leave out, is not read (a problem file is named above).")
    _check_spelling(table, chosen)
    names = sorted({c for c, _ in chosen.values()})
    if len(names) < (1 if for_model else 2):
        raise DataError(f"{WHAT} '{table}' gives {len(chosen)} image(s) read of {len(names)} class(es) "
                        f"({', '.join(names)}); classification needs images of at least two classes.")
    if left and not reported_already():
        log.info("note: %d image(s) under '%s' are not listed in %s '%s' and are not used", left, root, WHAT, table)
    order = sorted(chosen, key=lambda p: (chosen[p][0], p))
    records = [by_path[p] for p in order]
    labels = np.array([names.index(chosen[p][0]) for p in order], np.int64)
    if not reported_already():
        singles = [(r.path, names[i]) for r, i in zip(records, labels) if len(r.paths or []) <= 1]
        warn_copies([p for p, _ in singles], [c for _, c in singles])
    return records, labels, names
