"""How data bands meet a model's: by name (:func:`band_order`, the one rule: reordered, extras dropped, missing ones
refused), and whether two bands of one name are one band, by centre wavelength: the check that keeps a model that reads
bands by name from taking another sensor's bands under the same names (GDAL's ``Band 1`` ... of any converted ENVI
cube, Landsat-7's and Landsat-8's ``B4``), for data against a model and for the files of one folder."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

from geomed_ssl.bands.names import _canon, named_by_wavelength, split_wavelength_suffix
from geomed_ssl.errors import DataError
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
_BY_WAVELENGTH_SAID: set[tuple[tuple[str, ...], tuple[str, ...]]] = said_set()  # (model's, data's names) noted

WAVELENGTH_TOLERANCE_UM = 0.015  # closer centres are the same band (Landsat-8 B4 ~ Sentinel-2 B04) ...
WAVELENGTH_TOLERANCE_REL = 0.02  # ... or within 2 % of the wavelength: one sensor's platforms (S2A / S2B B12:
# 2202 / 2186 nm) differ by more than 15 nm in the SWIR; other sensors' bands of one name lie far apart


def same_band(a: float, b: float) -> bool:
    """Two centre wavelengths (µm) of one band name that are one band (see the tolerances above)."""
    return abs(a - b) <= max(WAVELENGTH_TOLERANCE_UM, WAVELENGTH_TOLERANCE_REL * max(a, b))


def check_band_wavelengths(expected: Sequence[str], expected_wl: Sequence[float | None] | None,
                           found_wl: Sequence[float | None] | None, order: Sequence[int] | None, where: str) -> None:
    """A DataError when a band matched by name (``order``, as ``band_order`` gave it) is not the
    model's band of that name by centre wavelength (:func:`same_band`: more than 15 nm and 2 % apart), both centres
    known: another sensor's bands under the same names (GDAL's ``Band 92`` of two cubes, Landsat-7's B4 (NIR) and
    Landsat-8's B4 (red)), which a model reading bands by name would take for its own."""
    if not expected_wl or not found_wl:
        return
    picked = list(found_wl) if order is None else [found_wl[i] for i in order]
    far = [(str(n), a, b) for n, a, b in zip(expected, expected_wl, picked)
           if a is not None and b is not None and not same_band(float(a), float(b))]
    if far:
        name, model_at, data_at = far[0]
        more = f" (and {len(far) - 1} more band(s) as far apart)" if len(far) > 1 else ""
        raise DataError(f"'{where}' band '{name}' lies at {data_at:.4g} µm, the model's band '{name}' at "
                        f"{model_at:.4g} µm{more}: the same names for another sensor's bands. This model reads "
                        "bands by name, so give it data of the sensor it was trained on (or bands named as that "
                        "sensor's), or pretrain with model.embedding=wavelength, which reads bands by wavelength; if "
                        "the file's wavelength tags are wrong, data.wavelengths states its bands' centres.")


def sensor_outliers(names: Sequence[str], wavelengths: Sequence[Sequence[float | None] | None]) -> dict[int, str]:
    """Of files whose bands bear the same ``names``, those (index: why) whose centre wavelengths are not most files'
    (:func:`same_band`, where every band's is known): another sensor's bands under the same names (GDAL's "Band 1"
    ... of two cubes)."""
    known = [list(map(float, w)) for w in wavelengths if w and all(v is not None for v in w)]
    if len(known) < 2:
        return {}
    common = Counter(tuple(round(v, 2) for v in w) for w in known).most_common(1)[0][0]
    reference = next(w for w in known if tuple(round(v, 2) for v in w) == common)
    out = {}
    for i, wl in enumerate(wavelengths):
        far = next((j for j, (a, b) in enumerate(zip(reference, wl or []))
                    if b is not None and not same_band(a, float(b))), None)
        if far is not None:
            out[i] = (f"names its bands as most files do but holds others: {names[far]} at {float(wl[far]):.4g} µm, "
                      f"not {reference[far]:.4g} µm (another sensor's bands under the same names); leave it out "
                      "(data.exclude) or pretrain on each sensor's files apart")
    return out


def brief(names: Sequence[str], keep: int = 8, as_list: bool = False) -> str:
    """Band names for a message: all of them when few, else the first and last ``keep / 2`` and how many in all;
    ``as_list``: in list form (``['B04']``, ``['B01', ..., 'B12'] (200 bands)``)."""
    names, few = [str(n) for n in names], len(names) <= keep
    sep, show = (", ", repr) if as_list else (" ", str)
    body = sep.join(map(show, names)) if few else \
        sep.join([*map(show, names[:keep // 2]), "...", *map(show, names[-(keep // 2):])])
    text = f"[{body}]" if as_list else body
    return text if few else f"{text} ({len(names)} bands)"


def loose_name(name: str) -> str:
    """A band name as the loose match compares it: without GDAL's wavelength suffix, case, spaces, underscores and
    leading zeros of its number (``Band 1 (0.400 Micrometers)``, ``band_1`` and ``BAND01`` are one)."""
    return _canon(split_wavelength_suffix(str(name))[0])


UNNAMED_MATCH_UM = 0.001  # a band named by its wavelength alone meets the model's band within a nanometre


def by_wavelength(want: Sequence[str], have: Sequence[str], wavelengths: tuple[Sequence[float | None] | None,
                  Sequence[float | None] | None] | None) -> list[int] | None:
    """Indices into ``have`` giving the ``want`` bands, matched by centre wavelength, when the data names its bands
    by wavelength alone ("400.02 Nanometers": GDAL's descriptions of an ENVI cube whose header lists wavelengths but
    no band names), each of the model's bands meets a different data band within a nanometre, and every centre is
    known; else None (the names decide)."""
    if wavelengths is None or wavelengths[0] is None or wavelengths[1] is None:
        return None
    want_wl, have_wl = list(wavelengths[0]), list(wavelengths[1])
    if len(want_wl) != len(want) or len(have_wl) != len(have) or None in want_wl or None in have_wl:
        return None
    if not named_by_wavelength(have):
        return None
    order = [min(range(len(have)), key=lambda i: abs(have_wl[i] - w)) for w in want_wl]  # type: ignore[operator]
    close = all(abs(have_wl[i] - w) <= UNNAMED_MATCH_UM for i, w in zip(order, want_wl))  # type: ignore[operator]
    return order if close and len(set(order)) == len(order) else None


def band_order(expected: Sequence[str], found: Sequence[str], where: str,
               source: str | None = None, wavelengths: tuple[Sequence[float | None] | None,
                                                             Sequence[float | None] | None] | None = None,
               ) -> list[int] | None:
    """The one band rule: indices into ``found`` that give the ``expected`` bands in their order, matched by NAME.

    None when ``found`` already equals ``expected``. Bands of ``found`` that ``expected`` lacks are dropped (the
    caller notes it); a band of ``expected`` that ``found`` lacks is a DataError naming the missing and extra bands.
    ``source`` (``BandInfo.source`` of ``found``) shapes the advice: data.band_names can rename bands only when the
    files do not describe them themselves. Names written another way (``B8`` for ``B08``) match only when the two
    lists hold as many bands: picking some of another sensor's bands by a look-alike name reads the wrong ones.
    ``wavelengths`` (the model's, the data's): bands the data names by their wavelength alone meet the model's by
    it (:func:`by_wavelength`).
    """
    want, have = [str(n) for n in expected], [str(n) for n in found]
    if want == have:
        return None
    missing = [n for n in want if n not in have]
    look_alike = ""
    if missing:  # the same bands written another way: B1 / B01, or GDAL's "B01 (0.443 Micrometers)" (models named
        # so before); never with bands left over: another sensor's B8 is not this B08
        loose = {loose_name(n): i for i, n in enumerate(have)}
        found_loosely = [loose.get(loose_name(n)) for n in want]
        if len(loose) == len(have) and all(i is not None for i in found_loosely):
            if len(want) == len(have):
                return found_loosely  # type: ignore[return-value]
            pairs = [f"{have[i]} ~ {n}" for n, i in zip(want, found_loosely) if have[i] != n]
            shown = ", ".join(pairs[:4]) + (" ..." if len(pairs) > 4 else "")
            look_alike = (f" The data names bands like the model's ({shown}) but holds others too, and a look-alike "
                          "name may be another sensor's band (Landsat-8's B8 is panchromatic, Sentinel-2's B08 "
                          "near-infrared), so they are not taken by their look: if they are these bands, name them as "
                          "the model does or give a file of the model's bands only.")
    if missing and (matched := by_wavelength(want, have, wavelengths)) is not None:
        if (tuple(want), tuple(have)) not in _BY_WAVELENGTH_SAID:
            _BY_WAVELENGTH_SAID.add((tuple(want), tuple(have)))
            log.info(f"'{where}' names its bands by wavelength alone ({brief(have)}): each of the model's bands "
                     f"({brief(want)}) is read from the data band within a nanometre of its centre.")
        return matched
    if missing:
        extra = [n for n in have if n not in want]
        hint = ("the file's band descriptions name its bands, so use data that holds these bands"
                if source == "file" else
                "if the data holds them under other names, set data.band_names to its band names in order")
        if named_by_wavelength(have):  # an ENVI cube's wavelengths, no band names
            hint = ("the file names its bands by wavelength alone, and they do not meet the model's bands one for "
                    "one within a nanometre (or a side's wavelengths are unknown): give the file the model's band "
                    "names as descriptions (in rasterio: dataset.set_band_description(band, name), opened in r+ "
                    "mode), or pretrain on files described like this one")
        if len(have) < len(want):  # no renaming can cover them
            hint = (f"the model reads {len(want)} bands and the data holds {len(have)}: give data with the model's "
                    "bands, or pretrain an encoder on data like this")
        raise DataError(f"'{where}' bands do not cover the model's: missing {brief(missing, as_list=True)}, extra "
                        f"{brief(extra, as_list=True)} (data: {brief(have)}; model: {brief(want)}); {hint}."
                        f"{look_alike}")
    return [have.index(n) for n in want]


def describe_order(expected: Sequence[str], found: Sequence[str], wavelengths: tuple[Sequence[float | None] | None,
                   Sequence[float | None] | None] | None = None) -> str:
    """A short note of what ``band_order`` did (given the same ``wavelengths``): reordered by name, names matched
    written another way or by wavelength, and which extra bands were dropped."""
    try:
        order = band_order(expected, found, "", wavelengths=wavelengths)
    except DataError:  # bands missing: the error says it where they are read
        return ""
    if order is None:
        return ""
    parts = []
    if order != sorted(order):
        how = "wavelength" if named_by_wavelength(found) else "name"
        parts.append(f"reordered by {how} to the model's order ({brief(expected)})")
    renamed = [f"{found[i]} as {want}" for want, i in zip(expected, order) if str(found[i]) != str(want)]
    if renamed:
        parts.append(f"matched {', '.join(renamed[:4])}{' ...' if len(renamed) > 4 else ''}")
    extra = [str(n) for i, n in enumerate(found) if i not in set(order)]
    if extra:
        parts.append(f"extra band(s) {brief(extra, as_list=True)} dropped (the model does not read them)")
    return "; ".join(parts)
