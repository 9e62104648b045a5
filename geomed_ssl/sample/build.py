"""Rebuild the bundled Indian Pines sample (maintainers only; users never run this).

    pip install tensorly
    python -m geomed_ssl.sample.build /path/to/shared/data/indian_pines_meta

Writes ``indian_pines.tif`` (200 bands, uint16, deflate, band descriptions and IMAGERY CENTRAL_WAVELENGTH_UM /
FWHM_UM tags) and ``indian_pines_gt.tif`` (uint8 labels 0..16, 0 = unlabelled, same grid) next to this file.
The scene has no CRS: the transform is a plain 20 m pixel grid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DROPPED_1BASED = set(range(104, 109)) | set(range(150, 164)) | {220}
HERE = Path(__file__).parent


def kept_band_table(spc_path: Path) -> list[tuple[str, float, float]]:
    """(name, centre µm, fwhm µm) for the 200 bands of the corrected cube, named by their original index."""
    rows = [line.split() for line in spc_path.read_text().splitlines()[2:] if line.strip()]
    table = [(f"B{i:03d}", float(r[0]) / 1000.0, float(r[1]) / 1000.0) for i, r in enumerate(rows, start=1)]
    kept = [row for i, row in enumerate(table, start=1) if i not in DROPPED_1BASED]
    if len(kept) != 200:
        raise SystemExit(f"expected 220 bands in {spc_path}, kept {len(kept)}")
    return kept


def main(meta_dir: str) -> None:
    import tensorly

    data_dir = Path(tensorly.__file__).parent / "datasets" / "data"
    cube = np.load(data_dir / "Indian_pines_corrected.npy")  # (145, 145, 200) uint16
    gt = np.load(data_dir / "Indian_pines_gt.npy").astype(np.uint8)  # (145, 145)
    bands = kept_band_table(Path(meta_dir) / "92AV3C_band_centers.spc")
    transform = from_origin(0.0, 145 * 20.0, 20.0, 20.0)
    profile = dict(driver="GTiff", height=145, width=145, transform=transform, crs=None, compress="deflate", zlevel=9,
                   predictor=2, tiled=True, blockxsize=64, blockysize=64, interleave="pixel")
    with rasterio.open(HERE / "indian_pines.tif", "w", count=200, dtype="uint16", **profile) as dst:
        dst.write(np.moveaxis(cube, -1, 0).astype(np.uint16))
        for b, (name, centre, fwhm) in enumerate(bands, start=1):
            dst.set_band_description(b, name)
            dst.update_tags(b, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=f"{centre:.5f}", FWHM_UM=f"{fwhm:.5f}")
        dst.update_tags(SENSOR="AVIRIS", SOURCE="Indian Pines 92AV3C corrected, Purdue (CC BY 3.0)")
    with rasterio.open(HERE / "indian_pines_gt.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(gt[None])
        dst.set_band_description(1, "class")
    print("wrote", HERE / "indian_pines.tif", "and", HERE / "indian_pines_gt.tif")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/indian_pines_meta")
