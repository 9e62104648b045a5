"""CSV files users give (labels, file lists): read as spreadsheets write them. UTF-8 with or without Excel's BOM,
else Windows-1252 (Excel's "CSV (Comma delimited)" on Windows); comma, semicolon (European locales) or tab
separated; header names matched without case or surrounding spaces."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

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


def header_names(path: str | Path) -> list[str]:
    """The lower-cased, stripped names of a table's header row (empty when it cannot be read), for advice."""
    try:
        head = _text(Path(path)).splitlines()[0]
    except (DataError, IndexError):
        return []
    try:
        dialect = csv.Sniffer().sniff(head, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return [c.strip().lower() for c in next(csv.reader([head], dialect), [])]


LINE = "#line"  # each row's line number in the file (blank lines skipped), for messages


def read_rows(path: str | Path, columns: Sequence[str], what: str = "CSV") -> list[dict[str, str]]:
    """The rows of a CSV whose header names ``columns`` (any case, spaces around ignored, other columns kept), as
    dicts keyed by the lower-cased, stripped column names (and :data:`LINE`), values stripped. A DataError names the
    file and what is missing."""
    path = Path(path)
    text = _text(path)
    head = text.splitlines()[0] if text.strip() else ""
    try:
        dialect = csv.Sniffer().sniff(head, delimiters=",;\t") if head else csv.excel
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
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
