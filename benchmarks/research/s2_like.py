"""A Sentinel-2-like scene with a land-cover map: the bundled Indian Pines cube (AVIRIS, 200 bands, 20 m) resampled
to Sentinel-2 MSI's bands, each a Gaussian spectral response (band centre and FWHM of S2A's MSI) over the AVIRIS bands
within one FWHM of its centre, in L1C order, described by name (``sensor: sentinel2`` matches them). B10 (1375 nm,
cirrus) lies in the water-absorption bands the corrected cube drops: it is the one kept AVIRIS band within its FWHM
(1353 nm), a stand-in. Writes OUT/indian_pines_s2.tif (float32, the cube's grid) and OUT/labels/indian_pines_s2.tif
(the map); ``bench_label_efficiency.py --s2like`` builds it under its ``--out``.

    PYTHONPATH=$PWD python benchmarks/research/s2_like.py /tmp/ip_s2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from geomed_ssl.sample import IMAGE, LABELS

# name: (centre nm, FWHM nm), Sentinel-2A MSI
S2_BANDS = {"B01": (443, 20), "B02": (490, 65), "B03": (560, 35), "B04": (665, 30), "B05": (705, 15),
            "B06": (740, 15), "B07": (783, 20), "B08": (842, 115), "B8A": (865, 20), "B09": (945, 20),
            "B10": (1375, 30), "B11": (1610, 90), "B12": (2190, 180)}


def responses(centres_nm: np.ndarray) -> dict[str, np.ndarray]:
    """Per S2 band with any AVIRIS band within one FWHM of its centre: weights over the AVIRIS bands (sum 1)."""
    out = {}
    for name, (c, fwhm) in S2_BANDS.items():
        w = np.exp(-0.5 * ((centres_nm - c) / (fwhm / 2.355)) ** 2) * (np.abs(centres_nm - c) <= fwhm)
        if w.sum() > 0:
            out[name] = w / w.sum()
    return out


def build(out: Path) -> tuple[Path, Path]:
    """Write the scene and its map under ``out`` (kept when already there): (image folder, label folder)."""
    out_dir = Path(out)
    image, label_dir = out_dir / "indian_pines_s2.tif", out_dir / "labels"
    if image.is_file() and (label_dir / image.name).is_file():
        return out_dir, label_dir
    label_dir.mkdir(parents=True, exist_ok=True)
    with rasterio.open(IMAGE) as src:
        cube = src.read().astype(np.float64)
        centres = np.array([float(src.tags(b, "IMAGERY")["CENTRAL_WAVELENGTH_UM"]) * 1000
                            for b in range(1, src.count + 1)])
        profile = src.profile
    bands = responses(centres)
    s2 = np.stack([np.tensordot(w, cube, axes=(0, 0)) for w in bands.values()]).astype(np.float32)
    profile.update(count=len(bands), dtype="float32", predictor=3)
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(s2)
        for b, name in enumerate(bands, start=1):
            dst.set_band_description(b, name)
            dst.update_tags(b, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=f"{S2_BANDS[name][0] / 1000:.4f}",
                            FWHM_UM=f"{S2_BANDS[name][1] / 1000:.4f}")
        dst.update_tags(SENSOR="Sentinel-2-like (Indian Pines AVIRIS resampled)")
    with rasterio.open(LABELS) as src, rasterio.open(label_dir / image.name, "w", **src.profile) as dst:
        dst.write(src.read())
    print(f"wrote {image}: {len(bands)} bands {' '.join(bands)}; "
          f"AVIRIS bands per S2 band: {[int((w > 0).sum()) for w in bands.values()]}")
    return out_dir, label_dir


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("/tmp/ip_s2"),
                    help="folder to build (default /tmp/ip_s2)")
    build(ap.parse_args().out)
