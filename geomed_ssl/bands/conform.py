"""The one band rule, shared by every command that feeds data to a model: bands are matched by NAME.

A file's bands are reordered to the model's order where their names match, bands the model does not read are
dropped with a note, and only missing bands are refused (``bands.band_order``). :func:`conform_record` records the
choice in ``FileRecord.band_index``, which the readers (``RasterReader``, ``VolumeReader``, the statistics reader)
apply to every read through :func:`pick_bands`. Band names given to undescribed files by POSITION (a sensor
profile's names) are reported here too: a warning, or an error under ``--strict``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from geomed_ssl.bands.matching import check_band_wavelengths
from geomed_ssl.bands.names import named_by_wavelength, positional_names_message
from geomed_ssl.bands.matching import band_order, brief, describe_order
from geomed_ssl.errors import DataError
from geomed_ssl.geo.gdal_read import alpha_bands
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
POSITION_POLICIES = ("warn", "error", "ignore")  # band names assigned by position from a sensor profile


def report_positional_names(paths: list[str], sensor: str | None, names: list[str], policy: str = "warn") -> None:
    """Warn (or raise, ``policy="error"``; nothing with "ignore") that the band names ``names`` were given to the
    undescribed files ``paths`` by position from the ``sensor`` profile."""
    if policy not in POSITION_POLICIES:
        raise ValueError(f"names_by_position must be one of {POSITION_POLICIES}, got {policy!r}")
    if not paths or policy == "ignore":
        return
    msg = positional_names_message(paths, sensor, names)
    if policy == "error":
        raise DataError(msg + " (--strict refuses names assigned by position)")
    log.warning("warning: %s", msg)


# -- the one band rule ------------------------------------------------------------------------------------------
def conform_record(record: Any, names: list[str], wavelengths: Sequence[float | None] | None = None) -> Any:
    """``record`` read as the bands ``names`` in that order, matched by name (see ``bands.band_order``): the
    same record when its bands already are ``names``, else a copy whose ``band_index`` makes the readers return
    them (extra bands dropped) and whose per-band fields follow. Missing bands are a DataError, and so are bands
    more than 15 nm from the model's ``wavelengths`` of their names (``bands.check_band_wavelengths``)."""
    try:
        order = band_order(names, record.band_names, record.path, record.band_source, (wavelengths, record.wavelengths))
    except DataError as err:
        raise DataError(f"{err}{alpha_note(record.paths if record.kind == 'raster' else [])}") from None
    check_band_wavelengths(names, wavelengths, record.wavelengths, order, record.path)
    if order is None:
        return record
    base = record.band_index if record.band_index is not None else list(range(record.num_bands))
    pick = lambda seq: None if seq is None else [seq[i] for i in order]  # noqa: E731
    picked = [record.band_names[i] for i in order]
    if named_by_wavelength(picked) and picked != list(names):  # met by wavelength: the model's
        picked = list(names)  # bands now, under its names (a later conform to them is the identity)
    return dataclasses.replace(record, band_index=[base[i] for i in order], num_bands=len(order),
                               band_names=picked, wavelengths=pick(record.wavelengths),
                               bandwidths=pick(record.bandwidths), value_range=pick(record.value_range),
                               value_scaling=None if record.value_scaling is None else
                               [pick(record.value_scaling[0]), pick(record.value_scaling[1])])


def alpha_note(paths: list[str]) -> str:
    """What to add to a band mismatch when a raster of ``paths`` has alpha bands (read as the mask, not as bands:
    a model trained before that read them as bands); empty otherwise."""
    import rasterio

    for path in paths:
        try:
            with rasterio.open(path) as src:
                alpha = alpha_bands(src)
        except Exception:  # noqa: BLE001 - only a hint: the mismatch itself is the error
            continue
        if alpha:
            n = alpha[0] + 1
            return (f" Band {n} of '{path}' is an alpha band, read as the mask of missing pixels and not as a band; a "
                    f"model that took it as a band (trained before 2026-12-05) reads copies made without the flag "
                    f"(gdal_translate -colorinterp_{n} undefined IN OUT), or pretrain again.")
    return ""


_noted: set[tuple[tuple[str, ...], tuple[str, ...]]] = said_set()  # (model's bands, file's bands) already noted


def note_band_order(path: str, names: list[str], found: list[str], volume: bool = False,
                    wavelengths: tuple[Sequence[float | None] | None, Sequence[float | None] | None] | None = None,
                    ) -> None:
    """Log what reading the file at ``path`` (bands ``found``) as the bands ``names`` does, reordered and / or
    extra bands dropped, once per distinct band list (one line for a folder of alike scenes); a ``volume``'s
    dropped channels are a warning (:func:`dropped_frames`); ``wavelengths`` (the model's, the file's) as for
    ``band_order``."""
    key = (tuple(names), tuple(found))
    note = describe_order(list(names), list(found), wavelengths) if key not in _noted else ""
    if note:
        _noted.add(key)
        level, word, tail = _how(volume, names, found)
        log.log(level, "%s: bands of '%s' (%s): %s; the same for any other file with these bands%s", word, path,
                brief(found), note, tail)


def dropped_frames(volume: bool, names: Sequence[str], found: Sequence[str]) -> str:
    """What to add when a volume holds more channels than the model reads: a 4D NIfTI's frames (a time series, or
    several sequences in one file) are read as channels, and all but the model's are left out."""
    if not volume or len(found) <= len(names):
        return ""
    return (f". A 4D volume's {len(found)} frames are read as channels and only {len(names)} of them kept: if they "
            "are a time series or sequences the model was not trained on, give each frame as a file of its own")


def _how(volume: bool, names: Sequence[str], found: Sequence[str]) -> tuple[int, str, str]:
    """Level, word and tail of a band-order line: a warning when a volume's frames are dropped, else a note."""
    tail = dropped_frames(volume, names, found)
    return (logging.WARNING, "warning", tail) if tail else (logging.INFO, "note", "")


def conform_catalog(catalog: Any, names: list[str], wavelengths: Sequence[float | None] | None = None) -> Any:
    """Every record of ``catalog`` conformed to the bands ``names`` (:func:`conform_record`, with the model's
    ``wavelengths`` of them when known); what was reordered or dropped is logged once per distinct band list."""
    records = [conform_record(r, list(names), wavelengths) for r in catalog.records]
    for found in dict.fromkeys(tuple(r.band_names) for r in catalog.records):
        own = next(r.wavelengths for r in catalog.records if tuple(r.band_names) == found)
        note = describe_order(list(names), list(found), (wavelengths, own))
        if note and (tuple(names), found) not in _noted:
            _noted.add((tuple(names), found))  # a file read again (a fine-tune's evaluation) is not noted again
            n = sum(tuple(r.band_names) == found for r in catalog.records)
            level, word, tail = _how(catalog.kind == "volume", names, found)
            log.log(level, "%s: bands of %d file(s) (%s): %s%s", word, n, brief(found), note, tail)
    first = records[0] if records else None
    return dataclasses.replace(catalog, records=records, band_names=list(names),
                               wavelengths=first.wavelengths if first else catalog.wavelengths,
                               bandwidths=first.bandwidths if first else catalog.bandwidths)


def pick_bands(array: Any, record: Any) -> Any:
    """The bands ``record.band_index`` selects from (C_file, *S) ``array`` (all of them when it is None)."""
    index = getattr(record, "band_index", None)
    return array if index is None else array[index]
