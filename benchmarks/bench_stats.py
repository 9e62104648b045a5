"""Band statistics on hyperspectral cubes: ``compute_stats`` (the hyperspectral recipe's 256 windows of 40 px)
against one plain read of the file, with a raster that its windows would read over read once (now) and with one
read per window (before 2026-12-05). Pixel-interleaved strips, as most cubes are written, decode whole rows for any
window; tiles decode the tiles a window touches.

    python benchmarks/bench_stats.py            # 800x500x200 int16 (160 MB raw), ~1 min
    python benchmarks/bench_stats.py --quick    # 300x200x200, ~10 s

Measured 2026-12-05 on the 2-core CPU (OMP_NUM_THREADS=1), 800x500x200:

| layout | one full read | stats, read once | stats, a read per window |
|---|---|---|---|
| strips, uncompressed | 0.35 s | 0.91 s | 2.46 s |
| strips, LZW | 0.62 s | 1.33 s | 6.60 s |
| 64x64 tiles, LZW | 0.57 s | 1.28 s | 3.19 s |

(The rest of ``compute_stats``, percentiles of the sampled values, is ~0.3-0.5 s of each.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_cube(path: Path, height: int, width: int, compress: str | None, tiled: bool) -> None:
    import rasterio
    from rasterio.transform import from_origin

    arr = np.random.default_rng(0).normal(1000, 200, (200, height, width)).astype(np.int16)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=200, dtype="int16",
                       crs="EPSG:32615", transform=from_origin(0, 0, 20, 20), interleave="pixel",
                       compress=compress, **({"tiled": True, "blockxsize": 64, "blockysize": 64} if tiled else {}),
                       ) as ds:
        ds.write(arr)


def main() -> None:
    import rasterio

    from geomed_ssl.config import load_recipe
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.data.stats import compute_stats
    from geomed_ssl.geo import gdal_read

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    height, width = (300, 200) if parser.parse_args().quick else (800, 500)
    data = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "mae_hyperspectral.yaml").data
    print("| layout | one full read | stats, read once | stats, a read per window |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for compress, tiled in ((None, False), ("lzw", False), ("lzw", True)):
            path = Path(tmp) / f"cube_{compress}_{tiled}.tif"
            make_cube(path, height, width, compress, tiled)
            t0 = time.perf_counter()
            with rasterio.open(path) as ds:
                ds.read()
            full = time.perf_counter() - t0
            catalog, times = scan(path, data), []
            for whole in (gdal_read.WHOLE_RASTER_BYTES, 0):
                gdal_read.WHOLE_RASTER_BYTES, keep = whole, gdal_read.WHOLE_RASTER_BYTES
                t0 = time.perf_counter()
                compute_stats(catalog, data, seed=0)
                times.append(time.perf_counter() - t0)
                gdal_read.WHOLE_RASTER_BYTES = keep
            layout = f"{'64x64 tiles' if tiled else 'strips'}, {compress or 'uncompressed'}"
            print(f"| {layout} | {full:.2f} s | {times[0]:.2f} s | {times[1]:.2f} s |")


if __name__ == "__main__":
    main()
