"""Which kind of input a file is, by its name: a GeoTIFF raster or a NIfTI volume, and the one-line refusal of a file
of the other kind than a model reads."""

from __future__ import annotations

from pathlib import Path

from geomed_ssl.errors import DataError
from geomed_ssl.files.listing import EXTENSIONS, KIND_WORDS, trained_on


def input_kind(path: str | Path) -> str | None:
    """``raster`` for .tif/.tiff, ``volume`` for .nii/.nii.gz, None for anything else (e.g. a folder)."""
    low = Path(path).name.lower()
    return next((kind for kind, extensions in EXTENSIONS.items() if low.endswith(extensions)), None)


def check_input_kind(path: str | Path, expected: str | None, what: str) -> None:
    """A one-line DataError when ``path`` is a raster and ``what`` (a model) reads volumes, or the reverse."""
    kind = input_kind(path)
    if kind is None or expected is None or kind == expected:
        return
    raise DataError(f"'{path}' is {KIND_WORDS[kind][0]} but {trained_on(what, expected, kind)}")
