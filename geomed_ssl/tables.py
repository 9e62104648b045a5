"""CSV files users give (labels, file lists): read as spreadsheets write them. UTF-8 with or without Excel's BOM,
else Windows-1252 (Excel's "CSV (Comma delimited)" on Windows); comma, semicolon (European locales) or tab
separated; header names matched without case or surrounding spaces."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from geomed_ssl.errors import DataError


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path.name} '{path}' ({err.strerror}).") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"cannot read '{path}': it is neither UTF-8 nor Windows-1252 text; save it as CSV UTF-8.")


def _dialect(head: str) -> Any:
    """The separator a table's first line uses (comma, semicolon or tab; Excel's comma when it says nothing)."""
    try:
        return csv.Sniffer().sniff(head, delimiters=",;\t") if head else csv.excel
    except csv.Error:
        return csv.excel


def header_names(path: str | Path) -> list[str]:
    """The lower-cased, stripped names of a table's header row (empty when it cannot be read), for advice."""
    try:
        head = _text(Path(path)).splitlines()[0]
    except (DataError, IndexError):
        return []
    return [c.strip().lower() for c in next(csv.reader([head], _dialect(head)), [])]


LINE = "#line"  # each row's line number in the file (blank lines skipped), for messages


def read_rows(path: str | Path, columns: Sequence[str], what: str = "CSV") -> list[dict[str, str]]:
    """The rows of a CSV whose header names ``columns`` (any case, spaces around ignored, other columns kept), as
    dicts keyed by the lower-cased, stripped column names (and :data:`LINE`), values stripped. A DataError names the
    file and what is missing."""
    path = Path(path)
    text = _text(path)
    head = text.splitlines()[0] if text.strip() else ""
    reader = csv.reader(io.StringIO(text), _dialect(head))
    try:
        rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    except csv.Error as err:
        raise DataError(f"{what} '{path}' is not a readable CSV ({err}).") from None
    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{what} '{path}' needs a header row with columns {', '.join(columns)}; found "
                        f"{', '.join(header) if header else 'nothing'}.")
    return [{LINE: str(n), **{k: (row[i].strip() if i < len(row) else "") for i, k in enumerate(header)}}
            for n, row in rows[1:]]


class FileIndex:
    """The files a table's rows may name, each standing for a key (an image, an embedded file): found by the row's
    path resolved against some folders, else by the end of a path (``2019/tile.tif``, a bare file name) in any case
    when that ends one file's path only."""

    def __init__(self, named: Iterable[tuple[str, str]]):
        """``named``: (path, key) pairs; a key may have several paths (a stack's files and its folder)."""
        self.by_path: dict[str, str] = {}
        self.by_name: dict[str, list[tuple[str, str]]] = {}
        for path, key in named:
            self.by_path[os.path.realpath(path)] = key
            self.by_name.setdefault(os.path.basename(path).lower(), []).append((path, key))

    def find(self, spelled: str, bases: Sequence[str | Path], where: str, several: str,
             absolute_tails: bool = False) -> str | None:
        """The key ``spelled`` names (``/`` separators), None when it names none: the path joined to each of
        ``bases`` in turn, else its end (an absolute path's too with ``absolute_tails``). A tail ending several
        files' paths is a DataError: ``where`` ("labels CSV 'x' line 3") and ``several`` ("matches {} images")
        say it."""
        for base in bases:
            key = self.by_path.get(os.path.realpath(os.path.join(str(base), spelled)))
            if key is not None:
                return key
        parts = [p for p in spelled.lower().split("/") if p not in ("", ".")]
        if (os.path.isabs(spelled) and not absolute_tails) or not parts or ".." in parts:
            return None
        tail = "/" + "/".join(parts)
        hits = sorted({k for p, k in self.by_name.get(parts[-1], [])
                       if ("/" + p.replace(os.sep, "/").lower()).endswith(tail)})
        if len(hits) > 1:
            raise DataError(f"{where}: '{spelled}' {several.format(len(hits))} ({', '.join(hits[:3])}"
                            f"{' ...' if len(hits) > 3 else ''}); give more of its path.")
        return hits[0] if hits else None
