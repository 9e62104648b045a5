"""Whether two bands of one name are one band, by centre wavelength: the check that keeps a model that reads bands
by name from taking another sensor's bands under the same names (GDAL's ``Band 1`` ... of any converted ENVI cube,
Landsat-7's and Landsat-8's ``B4``), for data against a model and for the files of one folder."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from geomed_ssl.errors import DataError

WAVELENGTH_TOLERANCE_UM = 0.015  # as models.spectral.MATCH_TOLERANCE_UM: closer centres are the same band ...
WAVELENGTH_TOLERANCE_REL = 0.02  # ... or within 2 % of the wavelength: one sensor's platforms (S2A / S2B B12:
# 2202 / 2186 nm) differ by more than 15 nm in the SWIR; other sensors' bands of one name lie far apart


def same_band(a: float, b: float) -> bool:
    """Two centre wavelengths (µm) of one band name that are one band (see the tolerances above)."""
    return abs(a - b) <= max(WAVELENGTH_TOLERANCE_UM, WAVELENGTH_TOLERANCE_REL * max(a, b))


def check_band_wavelengths(expected: Sequence[str], expected_wl: Sequence[float | None] | None,
                           found_wl: Sequence[float | None] | None, order: Sequence[int] | None, where: str) -> None:
    """A DataError when a band matched by name (``order``, as ``bands.names.band_order`` gave it) is not the
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
                        "sensor's), or pretrain with model.embedding=wavelength, which reads bands by wavelength.")


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
