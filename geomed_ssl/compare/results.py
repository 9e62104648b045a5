"""``results.csv``: one row per (encoder, budget, seed, protocol), rewritten atomically after every run so a
killed compare keeps every finished row and a rerun skips them."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable

from geomed_ssl.errors import DataError
from geomed_ssl.finetune.metrics import fraction_cell
from geomed_ssl.outfiles import atomic_write_text

COLUMNS = ("encoder", "labels_per_class", "label_fraction", "seed", "protocol", "oa", "aa", "kappa", "miou",
           "dice", "seconds")
KEY = COLUMNS[:5]
Row = dict[str, str]


def row_key(row: Row) -> tuple[str, ...]:
    return tuple(row[k] for k in KEY)


def make_row(encoder: str, cells: tuple[str, str], seed: int, protocol: str, scores: dict[str, float | None],
             seconds: float) -> Row:
    """A results.csv row: fractions with 6 decimals, blank where a figure is undefined or not applicable."""
    row = {"encoder": encoder, "labels_per_class": cells[0], "label_fraction": cells[1], "seed": str(seed),
           "protocol": protocol}
    for k in COLUMNS[5:10]:
        row[k] = fraction_cell(scores.get(k))
    row["seconds"] = f"{seconds:.2f}"
    return row


def read_rows(path: Path) -> list[Row]:
    """The rows of an existing results.csv (none when absent); another header is a DataError."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise DataError(f"'{path}' has columns {reader.fieldnames}, not those of `geomed-ssl compare` "
                                f"({','.join(COLUMNS)}); choose another --out.")
            return [dict(r) for r in reader if all(r.get(k) is not None for k in COLUMNS)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"'{path}' is damaged ({err}); pass --overwrite to start the compare again, or choose "
                        "another --out.") from None


def write_rows(path: Path, rows: Iterable[Row]) -> None:
    """results.csv, complete or not at all."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class ResultsFile:
    """The rows so far; ``add`` appends one and rewrites the file."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = read_rows(path)
        self.done = {row_key(r) for r in self.rows}

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.done.add(row_key(row))
        write_rows(self.path, self.rows)
