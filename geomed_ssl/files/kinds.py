"""Which kind of input a file is, by its name: a GeoTIFF raster or a NIfTI volume; the one-line refusal of a file
of the other kind than a model reads; the kind a folder holds (:func:`guess_kind`)."""

from __future__ import annotations

from pathlib import Path

from geomed_ssl.errors import DataError, GeomedError
from geomed_ssl.files.listing import (EXTENSIONS, KIND_WORDS, VOLUME_ONLY, analyze_image, has_ext, is_dicom,
                                      made_by_us, trained_on, walk)


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


def guess_kind(data_dir: Path) -> str:
    """volume when the folder holds NIfTI (or volumes in other formats: DICOM, MGH, NRRD, MetaImage, Analyze, to be
    told to convert) files and no GeoTIFF, else raster (a file: by its extension)."""
    if data_dir.is_file():
        other_volume = data_dir.name.lower().endswith(VOLUME_ONLY) or analyze_image(data_dir)
        return input_kind(data_dir) or ("volume" if other_volume else "raster")
    if not data_dir.is_dir():
        raise GeomedError(f"data folder '{data_dir}' does not exist.")
    has_nii = False
    for folder, dirs, files in walk(data_dir):  # the scan walks and reports it; stop at the first GeoTIFF
        dirs[:] = [d for d in dirs if not d.startswith(".") and not made_by_us(Path(folder) / d)]
        if any(has_ext(f, "raster") for f in files if not f.startswith(".")):
            return "raster"
        has_nii = has_nii or any(has_ext(f, "volume") or f.lower().endswith(VOLUME_ONLY) or is_dicom(Path(folder) / f)
                                 or analyze_image(Path(folder) / f) for f in files if not f.startswith("."))
    return "volume" if has_nii else "raster"
