"""Sensor band profiles (names and centre wavelengths in micrometres) and band resolution for a file.

Bands are always identified by NAME, never by position alone: two Sentinel-2 archives may hold the same 13 bands in
different orders. The real EuroSAT-MS GeoTIFFs, for example, carry no band descriptions and store
B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A (B8A last), while ``sentinel2`` below lists B8A after B08. For
such files set ``data.band_names`` to the file's real order; the wavelengths are then looked up by name::

    data:
      sensor: sentinel2
      band_names: [B01, B02, B03, B04, B05, B06, B07, B08, B09, B10, B11, B12, B8A]

Without it a sensor profile can only name undescribed bands by position: ``resolve_band_info`` says so
(``source="sensor"``) and the catalog warns (an error under ``--strict``). ``band_order`` is the one rule by which
data bands meet a model's (in :mod:`geomed_ssl.bands.matching`): by name, reordered, extras dropped,
missing ones refused.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from geomed_ssl.config.sections import SENSORS
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.once import said_set

SENSOR_DIR = Path(__file__).resolve().parent.parent / "sensors"
INDIAN_PINES_DROPPED = frozenset([*range(104, 109), *range(150, 164), 220])  # 1-based bands of the 220-band cube


# Nominal centre wavelengths (µm): Sentinel-2 MSI (ESA), Landsat 8 OLI/TIRS and Landsat 7 ETM+ (USGS band names).
_SENTINEL2 = {
    "B01": 0.443, "B02": 0.490, "B03": 0.560, "B04": 0.665, "B05": 0.705, "B06": 0.740, "B07": 0.783,
    "B08": 0.842, "B8A": 0.865, "B09": 0.945, "B10": 1.375, "B11": 1.610, "B12": 2.190,
}
_LANDSAT8 = {  # B1 coastal, B2 blue, B3 green, B4 red, B5 NIR, B6/B7 SWIR, B8 pan, B9 cirrus, B10/B11 thermal
    "B1": 0.443, "B2": 0.482, "B3": 0.561, "B4": 0.655, "B5": 0.865, "B6": 1.609, "B7": 2.201,
    "B8": 0.590, "B9": 1.373, "B10": 10.895, "B11": 12.005,
}
_LANDSAT7 = {  # B1 blue, B2 green, B3 red, B4 NIR, B5 SWIR1, B6 thermal, B7 SWIR2, B8 pan
    "B1": 0.483, "B2": 0.560, "B3": 0.662, "B4": 0.835, "B5": 1.648, "B6": 11.450, "B7": 2.206, "B8": 0.706,
}


@lru_cache(maxsize=1)
def _aviris_table() -> dict[str, Any]:
    path = SENSOR_DIR / "aviris_92av3c.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"sensor table '{path}' is missing or broken ({err}); reinstall geomed-ssl.") from None


def aviris_92av3c_bands() -> tuple[list[str], list[float]]:
    """All 220 bands of the Indian Pines 92AV3C cube: names B001..B220 (file index) and centres in µm."""
    centres = _aviris_table()["center_nm"]
    return [f"B{i:03d}" for i in range(1, len(centres) + 1)], [round(c / 1000.0, 5) for c in centres]


def indian_pines_bands() -> tuple[list[str], list[float]]:
    """The 200 bands of the "corrected" Indian Pines cube (1-based bands 104-108, 150-163, 220 dropped).

    Names keep the original 92AV3C index ("B001".."B220", with gaps); wavelengths are centres in µm.
    """
    names, wl = aviris_92av3c_bands()
    keep = [i for i in range(len(names)) if i + 1 not in INDIAN_PINES_DROPPED]
    return [names[i] for i in keep], [wl[i] for i in keep]


def aviris_224_bands() -> tuple[list[str], list[float]]:
    """The 224 AVIRIS channels as CH001..CH224 with centres in µm.

    Channels come from the 1992 calibration of the 92AV3C cube, which lacks the first channel of each of the four
    spectrometers (1, 33, 97, 161); those are extrapolated one channel step down from their spectrometer's next two.
    Named CH### (AVIRIS channel), not B###, so they never collide with the 92AV3C file-index names.
    """
    table = _aviris_table()
    by_channel = {ch: c for ch, c in zip(table["aviris_channel"], table["center_nm"])}
    for ch in (1, 33, 97, 161):
        if ch not in by_channel:
            by_channel[ch] = 2 * by_channel[ch + 1] - by_channel[ch + 2]
    return [f"CH{ch:03d}" for ch in range(1, 225)], [round(by_channel[ch] / 1000.0, 5) for ch in range(1, 225)]


def _profile_items(sensor: str) -> tuple[list[str], list[float]]:
    if sensor == "sentinel2":
        return list(_SENTINEL2), list(_SENTINEL2.values())
    if sensor == "landsat8":
        return list(_LANDSAT8), list(_LANDSAT8.values())
    if sensor == "landsat7":
        return list(_LANDSAT7), list(_LANDSAT7.values())
    if sensor == "aviris":
        return aviris_224_bands()
    if sensor == "aviris_92av3c":
        return aviris_92av3c_bands()
    if sensor == "indian_pines":
        return indian_pines_bands()
    raise ConfigError(f"data.sensor '{sensor}' is not a known sensor profile. Known: {', '.join(SENSORS)}.")




def sensor_profile(sensor: str) -> dict[str, float]:
    """Band name -> centre wavelength (µm), in the sensor's canonical band order."""
    names, wl = _profile_items(str(sensor).lower())
    return dict(zip(names, wl))


def _canon(name: str) -> str:
    """Loose key for band-name matching: upper case, no spaces, leading zeros of the number dropped (B01 == B1)."""
    key = re.sub(r"[\s_\-]", "", str(name).upper())
    return re.sub(r"^([A-Z]+)0+(\d)", r"\1\2", key)


def lookup_wavelengths(band_names: Sequence[str], sensor: str) -> list[float | None]:
    """Centre wavelengths (µm) of ``band_names`` in the ``sensor`` profile, matched by name; None where unknown."""
    table = {_canon(k): v for k, v in sensor_profile(sensor).items()}
    return [table.get(_canon(n)) for n in band_names]


def _tag_um(tags: dict[str, Any] | None, key: str) -> float | None:
    """A positive finite µm value from one band's tags (plain or ``IMAGERY:`` prefixed ``key``), or None."""
    for k, value in (tags or {}).items():
        if str(k).upper() in (key, f"IMAGERY:{key}"):
            try:
                out = float(value)
            except (TypeError, ValueError):
                return None
            return out if math.isfinite(out) and out > 0 else None
    return None


# GDAL writes an ENVI header's wavelengths into the band descriptions it converts: "B01 (0.443 Micrometers)",
# "Band 1 (443.0 Nanometers)". The name is the part before; the value is the band's centre wavelength.
GDAL_WAVELENGTH = re.compile(r"^(?P<name>.*?)\s*\(\s*(?P<value>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*"
                             r"(?P<unit>micrometers?|microns?|um|µm|nanometers?|nm)\s*\)$", re.IGNORECASE)
# a description that is only the wavelength: GDAL's ENVI driver when the header has wavelengths but no band names
BARE_WAVELENGTH = re.compile(r"^\s*(?P<value>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*"
                             r"(?P<unit>micrometers?|microns?|um|µm|nanometers?|nm)\s*$", re.IGNORECASE)


def named_by_wavelength(names: Sequence[Any]) -> bool:
    """Whether bands are named by their wavelength alone ("400.02 Nanometers": GDAL's descriptions of an ENVI cube
    whose header lists wavelengths but no band names), every one of them."""
    return bool(names) and all(BARE_WAVELENGTH.match(str(n)) for n in names)


def split_wavelength_suffix(description: str) -> tuple[str, float | None]:
    """``"B01 (0.443 Micrometers)"`` -> ``("B01", 0.443)``: the name without GDAL's wavelength suffix and that
    wavelength in µm; ``"377.00 Nanometers"`` -> itself and 0.377 (a description without one comes back as it is,
    with None)."""
    text = description.strip()
    found = GDAL_WAVELENGTH.match(text)
    name = found["name"] if found else ""
    if not name:  # no name before the value: the value alone, or no wavelength at all
        found, name = BARE_WAVELENGTH.match(text), text
    if not found:
        return text, None
    value = float(found["value"]) / (1000.0 if found["unit"].lower().startswith(("n",)) else 1.0)
    return name, value if math.isfinite(value) and value > 0 else None


def _tag_wavelength(tags: dict[str, Any] | None) -> float | None:
    """One band's centre wavelength (µm) from its tags, or None: CENTRAL_WAVELENGTH_UM (GDAL's IMAGERY domain; a value
    above 100 is nanometres written under the µm key), else the ``wavelength`` / ``wavelength_units`` pair that GDAL
    before 3.10 (and many tools) write for ENVI cubes (nanometres or micrometres; without units, a value above 100 is
    read as nanometres)."""
    found = _tag_um(tags, "CENTRAL_WAVELENGTH_UM")
    if found is not None:
        return found / 1000.0 if _nm_under_um(tags) else found
    return _tag_length(tags, "WAVELENGTH", 100.0)


ROUNDED_UM = 0.0006  # GDAL 3.10 writes CENTRAL_WAVELENGTH_UM to 3 decimals (a nanometre) beside finer sources


def finest_wavelength(tags: dict[str, Any] | None) -> float | None:
    """One band's centre wavelength (µm) by :func:`_tag_wavelength`'s order, but from the finest source that
    agrees with it to GDAL's rounding: a converted ENVI cube carries ``CENTRAL_WAVELENGTH_UM='0.400'`` beside the
    header's ``wavelength=400.02`` and the description "400.02 Nanometers" (``SUFFIX_WAVELENGTH_UM``); AVIRIS'
    overlapping spectrometers put bands 0.4 nm apart, which the rounded value merges."""
    first = _tag_wavelength(tags)
    if first is None:
        return _tag_um(tags, "SUFFIX_WAVELENGTH_UM")
    others = [v for v in (_tag_length(tags, "WAVELENGTH", 100.0), _tag_um(tags, "SUFFIX_WAVELENGTH_UM"))
              if v is not None and abs(v - first) <= ROUNDED_UM]
    return max([first, *others], key=lambda v: len(repr(round(v, 9)).rstrip("0")))


def _nm_under_um(tags: dict[str, Any] | None) -> bool:
    """The band's µm tags hold nanometres: its CENTRAL_WAVELENGTH_UM is above 100 (no imaging band lies past 100 µm);
    its FWHM_UM is read with it."""
    centre = _tag_um(tags, "CENTRAL_WAVELENGTH_UM")
    return centre is not None and centre > 100.0


def _tag_width(tags: dict[str, Any] | None) -> float | None:
    """One band's width (FWHM, µm) from its tags, or None: FWHM_UM (GDAL's IMAGERY domain), else the ``fwhm`` tag
    that tools writing ENVI cubes give in the wavelengths' units (``fwhm_units`` or ``wavelength_units``; without
    units, a value above 1 is read as nanometres)."""
    found = _tag_um(tags, "FWHM_UM")
    if found is not None:
        return found / 1000.0 if _nm_under_um(tags) else found
    return _tag_length(tags, "FWHM", 1.0)


def _tag_length(tags: dict[str, Any] | None, key: str, nm_above: float) -> float | None:
    """The tag ``key`` in µm, its unit from ``<key>_units`` or else ``wavelength_units`` (nanometres or micrometres;
    units that are no length, ENVI's Index, Unknown or Wavenumber, give None; without units, a value above
    ``nm_above`` is read as nanometres)."""
    value = _tag_um(tags, key)
    if value is None:
        return None
    found = {str(k).upper().removeprefix("IMAGERY:"): str(v).strip().lower() for k, v in (tags or {}).items()}
    units = found.get(f"{key}_UNITS") or found.get("WAVELENGTH_UNITS", "")
    if units and not units.startswith(("nano", "nm", "micro", "um", "µm")):  # ENVI's Index, Unknown, Wavenumber
        return None
    nanometres = units.startswith(("nano", "nm")) or (not units and value > nm_above)
    return value / 1000.0 if nanometres else value


# Where a file's band names came from (``BandInfo.source``). Only "sensor" names are asserted without evidence: the
# profile's names given to undescribed bands by position.
BAND_SOURCES = ("file", "recipe", "sensor", "channels", "partial", "index")  # partial: some from the file


@dataclass
class BandInfo:
    """A file's band names, centre wavelengths and widths (µm; None where unknown) and where the names came from
    (one of ``BAND_SOURCES``)."""

    names: list[str]
    wavelengths: list[float | None] | None
    bandwidths: list[float | None] | None
    source: str


def resolve_band_info(
    num_bands: int,
    descriptions: Sequence[str | None] | None,
    tags: dict[int, dict[str, Any]] | None,
    data_cfg: Any,
    path: str,
    fallback_names: Sequence[str] | None = None,
) -> BandInfo:
    """Band names, centre wavelengths and band widths (µm) of one file, and where the names came from.

    Names: the file's band descriptions when every band has one ("file"; GDAL's wavelength suffix of converted ENVI
    files, "B01 (0.443 Micrometers)", taken off and read as the wavelength); else ``data_cfg.band_names`` ("recipe");
    else ``fallback_names`` (the names of ``data.channels``' globs, "channels"); else the descriptions some bands
    have, the others "band_<position>" ("partial", warned about; unless the sensor profile's names agree with the
    described ones by position: then the profile's); else the ``data_cfg.sensor`` profile's
    names BY POSITION ("sensor"; only when its band count matches: a mismatch is a DataError); else "band_1".."band_N"
    ("index"). Wavelengths: ``data_cfg.wavelengths``; else the sensor profile matched by name, unless the band's own
    ``CENTRAL_WAVELENGTH_UM`` tag names another band (``tags`` maps the 1-based band index to that band's IMAGERY/plain
    tags); else that tag; None for the whole list when no band has one. Widths: each band's ``FWHM_UM`` tag (GDAL
    IMAGERY domain, as the bundled sample writes it), else its ``fwhm`` tag (:func:`_tag_width`); None for the whole
    list when no band has one.
    """
    suffixed = [split_wavelength_suffix(str(d)) if d is not None else (None, None) for d in descriptions or []]
    if suffixed and all(wl is not None for _, wl in suffixed):  # every band "NAME (VALUE UNIT)": GDAL's ENVI names
        if len({name for name, _ in suffixed}) == len(suffixed):  # "Reflectance (400 nm)", ... keep their names
            descriptions = [name for name, _ in suffixed]
        tags = {i + 1: {**(tags or {}).get(i + 1, {}), "SUFFIX_WAVELENGTH_UM": wl}
                for i, (_, wl) in enumerate(suffixed)}
    names, source = _band_names(num_bands, descriptions, data_cfg, path, fallback_names)
    tags = tags or {}
    widths = [_tag_width(tags.get(i + 1)) for i in range(num_bands)]
    bandwidths = widths if any(w is not None for w in widths) else None
    wavelengths = _band_wavelengths(names, tags, data_cfg, path)
    sensor = getattr(data_cfg, "sensor", None)
    if source == "channels" and sensor and wavelengths is None and (sensor, tuple(names)) not in _CHANNELS_NOTED:
        _CHANNELS_NOTED.add((sensor, tuple(names)))  # the profile said nothing: say so, once per name list
        logging.getLogger("geomed_ssl").warning(
            f"warning: data.channels names the bands after its globs ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}), which are not band names of data.sensor '{sensor}', so they "
            f"have no wavelengths: name them as the sensor does with data.band_names, in the globs' order "
            f"({sensor_names_for(names, sensor)}).")
    return BandInfo(names, wavelengths, bandwidths, source)


# centre wavelengths (µm) of the colour words file and folder names use for bands, for naming them after a sensor
COLOUR_WORDS = (("coastal", 0.443), ("aerosol", 0.443), ("blue", 0.49), ("green", 0.56), ("rededge", 0.705),
                ("red_edge", 0.705), ("red", 0.665), ("nir", 0.842), ("swir1", 1.61), ("swir_1", 1.61),
                ("swir2", 2.2), ("swir_2", 2.2))


def sensor_names_for(globs: Sequence[str], sensor: str) -> str:
    """The ``data.band_names`` to give for channel globs named by colour (red, green, blue, nir, ...): each the
    ``sensor``'s band nearest in wavelength, e.g. "[B04, B03, B02, B08]"; else the sensor's band names to pick
    from."""
    try:
        profile = sensor_profile(sensor)
    except Exception:
        return "its band names"
    picked = []
    for glob in globs:
        word = next((um for w, um in COLOUR_WORDS if w in glob.lower().replace("-", "_")), None)
        if word is None:
            return f"of {sensor}'s {', '.join(profile)}"
        picked.append(min(profile, key=lambda name: abs(profile[name] - word)))
    return f"here [{', '.join(picked)}]"


_DESCRIBED_NOTED: set[tuple[tuple[str, ...], tuple[str, ...]]] = said_set()
_CHANNELS_NOTED: set[tuple[str, tuple[str, ...]]] = said_set()


def _note_described(path: str, described: tuple[str, ...], given: tuple[str, ...]) -> None:
    """Warn, once per pair of name lists (not once per file), that a file's descriptions overrule band_names."""
    if (described, given) in _DESCRIBED_NOTED:
        return
    _DESCRIBED_NOTED.add((described, given))
    logging.getLogger("geomed_ssl").warning(
        f"warning: '{path}' (and files like it) name their own bands ({', '.join(described[:6])}"
        f"{', ...' if len(described) > 6 else ''}); data.band_names ({', '.join(given[:6])}"
        f"{', ...' if len(given) > 6 else ''}) is not used for them: a file's own band descriptions win.")


_PARTLY_NOTED: set[tuple[str, ...]] = said_set()


def _described(description: str | None) -> bool:
    return description is not None and bool(str(description).strip())


def _profile_agrees(descriptions: list[str | None], sensor: str | None, num_bands: int) -> bool:
    """Whether the ``sensor`` profile has ``num_bands`` bands and its name at each described band's position is
    that band's description: the profile then names the undescribed ones by position, as it names undescribed
    files."""
    profile = list(sensor_profile(sensor)) if sensor else []
    return len(profile) == num_bands and all(_canon(str(d)) == _canon(n) for d, n in zip(descriptions, profile)
                                             if _described(d))


def _note_partly_named(path: str, names: tuple[str, ...], named: tuple[bool, ...]) -> None:
    """Say, once per name list, that a file names some of its bands and which generic names the others got."""
    if names in _PARTLY_NOTED:
        return
    _PARTLY_NOTED.add(names)
    unnamed = [n for n, ok in zip(names, named) if not ok]
    logging.getLogger("geomed_ssl").warning(
        f"warning: '{path}' (and files like it) name {len(names) - len(unnamed)} of their {len(names)} bands "
        f"({', '.join(n for n, ok in zip(names, named) if ok)}); the others are called {', '.join(unnamed[:6])}"
        f"{', ...' if len(unnamed) > 6 else ''} after their position. Bands meet a model's by name: to name every "
        "band, describe it in the file (in rasterio: dataset.set_band_description(band, name), opened in r+ mode) or "
        "set data.band_names in the file's order (predict, evaluate: --band-names).")


def _band_names(num_bands: int, descriptions: Sequence[str | None] | None, data_cfg: Any, path: str,
                fallback_names: Sequence[str] | None) -> tuple[list[str], str]:
    """The band names of one file and their source, in :func:`resolve_band_info`'s order of preference; they must
    be unique."""
    descriptions = list(descriptions or [])
    sensor = getattr(data_cfg, "sensor", None)
    cfg_names = getattr(data_cfg, "band_names", None)
    if len(descriptions) == num_bands and all(map(_described, descriptions)):
        names, source = [str(d).strip() for d in descriptions], "file"
        # band_names naming as many bands, but others: meant for these files and not used (a model's own names in
        # another order, or a subset, are the band rule at work, nothing to say)
        if cfg_names is not None and len(cfg_names) == num_bands and \
                sorted(map(_canon, cfg_names)) != sorted(map(_canon, names)):
            _note_described(path, tuple(names), tuple(str(n) for n in cfg_names))
    elif cfg_names is not None:
        if len(cfg_names) != num_bands:
            raise DataError(
                f"'{path}' has {num_bands} bands but data.band_names lists {len(cfg_names)}; "
                f"give one name per band in the file's order."
            )
        names, source = [str(n) for n in cfg_names], "recipe"
    elif fallback_names is not None and len(fallback_names) == num_bands:  # named by the user's globs: before
        names, source = [str(n) for n in fallback_names], "channels"  # any guess by position
    elif any(map(_described, descriptions)) and not _profile_agrees(descriptions, sensor, num_bands):
        given = (descriptions + [None] * num_bands)[:num_bands]  # some bands named (an appended QA band not, say):
        names = [str(d).strip() if _described(d) else f"band_{i + 1}" for i, d in enumerate(given)]  # their names
        source = "partial"  # win over a sensor's guess by position that contradicts them
        _note_partly_named(path, tuple(names), tuple(map(_described, given)))
    elif sensor:
        profile_names = list(sensor_profile(sensor))
        if len(profile_names) != num_bands:
            raise DataError(
                f"'{path}' has {num_bands} bands but sensor profile '{sensor}' has {len(profile_names)}: if it is "
                f"another product, leave it out (data.exclude); " + (
                    "if each file holds one band of a scene, stack a scene's files with data.channels (globs, one "
                    "per band)." if num_bands == 1 else f"if every file has {num_bands} bands, name them in order "
                    "with data.band_names (predict, evaluate: --band-names), or fix data.sensor.")
            )
        names, source = profile_names, "sensor"
    else:
        names, source = [f"band_{i}" for i in range(1, num_bands + 1)], "index"
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        fix = ("the file's own band descriptions name them and win over data.band_names: write distinct "
               "descriptions (in rasterio: dataset.set_band_description(band, name), opened in r+ mode) or leave the "
               "file out (data.exclude)" if source == "file" else "set data.band_names to distinct names")
        raise DataError(f"'{path}': band names must be unique, {dup} repeat; {fix}.")
    return names, source


def _band_wavelengths(names: list[str], tags: dict[int, dict[str, Any]], data_cfg: Any,
                      path: str) -> list[float | None] | None:
    """Centre wavelengths (µm) of the named bands: the recipe's (``data.wavelengths`` corrects a file's wrong or
    missing ones), else the sensor profile's by name where the band's own (its tags) is missing or the same band,
    else each band's own (warned about when the profile names another: another sensor's band of that name); None
    when no band has one."""
    num_bands = len(names)
    own = [finest_wavelength(tags.get(i + 1)) for i in range(num_bands)]
    cfg_wl = getattr(data_cfg, "wavelengths", None)
    if cfg_wl is not None:
        if len(cfg_wl) != num_bands:
            raise DataError(
                f"'{path}' has {num_bands} bands but data.wavelengths lists {len(cfg_wl)}; give one centre "
                f"wavelength (µm) per band."
            )
        return [float(w) for w in cfg_wl]
    sensor = getattr(data_cfg, "sensor", None)
    wl: list[float | None] = lookup_wavelengths(names, sensor) if sensor else [None] * num_bands
    from geomed_ssl.bands.matching import same_band  # (matching reads this module's names)

    other = [(n, o, w) for n, o, w in zip(names, own, wl) if o is not None and w is not None and not same_band(o, w)]
    if other:  # the file's own centre wins: another sensor's B10 (thermal) is not Sentinel-2's B10 (cirrus)
        _note_other_sensor(path, str(sensor), other)
    wl = [o if o is not None and (w is None or not same_band(o, w)) else w for w, o in zip(wl, own)]
    return wl if any(w is not None for w in wl) else None


_OTHER_SENSOR_NOTED: set[tuple[str, tuple[str, ...]]] = said_set()


def _note_other_sensor(path: str, sensor: str, other: list[tuple[str, float, float]]) -> None:
    """Warn, once per sensor and band list, that a file's own band centres are not those data.sensor names."""
    key = (sensor, tuple(n for n, _, _ in other))
    if key in _OTHER_SENSOR_NOTED:
        return
    _OTHER_SENSOR_NOTED.add(key)
    shown = ", ".join(f"{n} {o:.3g} µm (profile {w:.3g})" for n, o, w in other[:4]) + (" ..." if len(other) > 4 else "")
    logging.getLogger("geomed_ssl").warning(
        f"warning: '{path}' (and files like it) give their bands centre wavelengths other than data.sensor "
        f"'{sensor}' has for those names: {shown}; the file's own are kept, so such bands meet no band of that "
        "sensor of the same name. If these files are of another sensor, set data.sensor to it (or null); if their "
        "tags are wrong, data.wavelengths states the centres.")


def positional_names_message(paths: Sequence[str], sensor: str | None, names: Sequence[str]) -> str:
    """One line: these files' band names were assigned by position from a sensor profile, and how to state them."""
    shown = ", ".join(f"'{p}'" for p in paths[:2]) + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")
    return (f"band names of {len(paths)} file(s) ({shown}) were assigned by position from sensor profile "
            f"'{sensor}' ({' '.join(names)}): the files carry no band descriptions. If they store their bands in "
            "another order (EuroSAT-MS keeps B8A last), state the order with data.band_names in the recipe, "
            f"--set data.band_names=[{','.join(names[:3])},...] (predict, evaluate: --band-names "
            f"{','.join(names[:3])},...).")


def false_colour_bands(band_names: Sequence[str], wavelengths: Sequence[float | None] | None) -> tuple[int, int, int]:
    """Band indices (red, green, blue) for a preview image.

    Sentinel-2 names pick B04/B03/B02; else known wavelengths pick the bands nearest 0.65/0.56/0.48 µm (only among
    bands within 0.35-1.0 µm, so a thermal band never stands in for red); else three bands spread over the stack
    (last quarter, middle, first quarter).
    One or two bands repeat.
    """
    n = len(band_names)
    if n == 0:
        raise DataError("false_colour_bands: no bands to choose from.")
    if n < 3:
        return (0, 0, 0) if n == 1 else (0, 1, 1)
    upper = [str(b).strip().upper() for b in band_names]
    if all(k in upper for k in ("B04", "B03", "B02")):  # Sentinel-2 naming
        return upper.index("B04"), upper.index("B03"), upper.index("B02")
    if wavelengths is not None and len(wavelengths) == n:
        known = [(i, w) for i, w in enumerate(wavelengths) if w is not None and 0.35 <= w <= 1.0]
        if len(known) >= 3:
            pick = [min(known, key=lambda iw: abs(iw[1] - target))[0] for target in (0.65, 0.56, 0.48)]
            if len(set(pick)) == 3:
                return pick[0], pick[1], pick[2]
    return n - 1 - (n - 1) // 4, (n - 1) // 2, (n - 1) // 4
