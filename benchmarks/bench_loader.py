"""Raster loader throughput and memory: naive random windows vs PretrainDataset's block-aligned region reads.

    python benchmarks/bench_loader.py            # 8192x8192x13 file (made and scanned once, ~40 s), then ~1 min
    python benchmarks/bench_loader.py --quick    # 2048x2048x13 file, ~30 s

The test file is a 13-band uint16 GeoTIFF, deflate-compressed (predictor 2, zlevel 1 to keep its creation quick;
decoding speed hardly depends on the level) in 256x256 tiles, with smooth fields, patches and pixel noise. It is
cached in the temp folder. Throughput is measured in this one process (a DataLoader multiplies it by its workers).
RSS growth is measured against the RSS right after the imports, after each run; file creation, scan and band
statistics run once in a child process and are cached as JSON beside the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS, TILE = 13, 256


def rss_mb() -> float:
    """Resident set size of this process in MB (psutil when installed, else /proc/self/status)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_file(path: Path, size: int) -> None:
    """Write the structured test GeoTIFF one tile row at a time (atomic rename when done)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=BANDS, dtype="uint16", nodata=0, tiled=True,
                   blockxsize=TILE, blockysize=TILE, compress="deflate", predictor=2, zlevel=1,
                   crs="EPSG:32633", transform=from_origin(500000.0, 5100000.0, 10.0, 10.0))
    rng = np.random.default_rng(0)
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, TILE):
            y = np.arange(r0, r0 + TILE, dtype=np.float32)[:, None]
            field = np.sin(y / 97.0) * np.cos(x / 131.0) + 0.5 * np.sin((x + 2 * y) / 23.0)  # (TILE, size)
            patches = (np.floor(y / 512) * 7 + np.floor(x / 512) * 13) % 5  # land-cover-like parcels
            out = np.empty((BANDS, TILE, size), np.uint16)
            for b in range(BANDS):
                noise = rng.integers(0, 16, field.shape)
                out[b] = 1000 + 300 * b + 400 * (1 + 0.1 * b) * field + 250 * patches + noise
            dst.write(out, window=Window(0, r0, size, TILE))
    os.replace(tmp, path)


def naive_rate(path: Path, window: int, seconds: float) -> float:
    """Random windows read straight from the file (one open handle, a small GDAL block cache)."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    n, start = 0, time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path) as src:
        while time.perf_counter() - start < seconds:
            r, c = rng.integers(0, src.height - window, 2)
            src.read(window=Window(int(c), int(r), window, window))
            n += 1
    return n / (time.perf_counter() - start)


def tile_read_ms(path: Path, seconds: float) -> float:
    """Milliseconds to read (decode) one whole random tile: the cost a region read pays per tile."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(1)
    n, start = 0, time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path) as src:
        while time.perf_counter() - start < seconds:
            r, c = rng.integers(0, src.height // TILE, 2) * TILE
            src.read(window=Window(int(c), int(r), TILE, TILE))
            n += 1
    return (time.perf_counter() - start) / n * 1e3


def dataset_rate(ds, first: int, count: int, seconds: float) -> tuple[float, int]:
    """Samples per second over up to ``count`` indices from ``first`` (stops early after ``seconds``)."""
    n, start = 0, time.perf_counter()
    for i in range(first, first + count):
        ds[i]
        n += 1
        if time.perf_counter() - start > seconds:
            break
    return n / (time.perf_counter() - start), n


def prepare(folder: Path, size: int, window: int) -> None:
    """Child process: make the file, scan it and compute band statistics once; cache catalog and stats as JSON.

    Kept out of the measuring process: GDAL's write cache and the scan's decimated read (which decodes every tile
    of a file without overviews) would otherwise sit in its RSS.
    """
    import json

    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.data.stats import compute_stats

    path = folder / f"bench_{size}x{size}x{BANDS}.tif"
    start = rss_mb()
    if not path.exists():
        t = time.perf_counter()
        make_file(path, size)
        print(f"made {path.name} in {time.perf_counter() - t:.0f} s")
    cfg = DataConfig(patch_size=window, stats_windows=64)
    t = time.perf_counter()
    catalog = scan(folder, cfg, strict=True)
    print(f"scan: {time.perf_counter() - t:.1f} s, RSS +{rss_mb() - start:.0f} MB (in the preparing process)")
    compute_stats(catalog, cfg, seed=0).save(folder / f"stats_w{window}.json")
    (folder / f"catalog_w{window}.json").write_text(json.dumps(catalog.to_dict()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2048x2048 file and shorter runs")
    p.add_argument("--size", type=int, default=None, help="file side in pixels (default 8192, quick 2048)")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--windows", type=int, default=None, help="dataset windows per view (default 20000, quick 4000)")
    p.add_argument("--seconds", type=float, default=None, help="time cap per measurement (default 20, quick 5)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "geomed_ssl_bench")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # internal: the child process
    args = p.parse_args(argv)
    size = args.size or (2048 if args.quick else 8192)
    count = args.windows or (4000 if args.quick else 20000)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    folder = args.cache_dir / f"s{size}"
    if args.prepare:
        prepare(folder, size, args.window)
        return
    path = folder / f"bench_{size}x{size}x{BANDS}.tif"
    catalog_json, stats_json = folder / f"catalog_w{args.window}.json", folder / f"stats_w{args.window}.json"
    if not (path.exists() and catalog_json.exists() and stats_json.exists()):
        cmd = [sys.executable, __file__, "--prepare", "--size", str(size), "--window", str(args.window),
               "--cache-dir", str(args.cache_dir)]
        subprocess.run(cmd, check=True)

    import json

    import torch  # noqa: F401  (imported before the baseline, as in training)

    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.catalog import Catalog
    from geomed_ssl.views.datasets import PretrainDataset
    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.views.builder import build_views

    baseline = rss_mb()
    print(f"file: {path} {path.stat().st_size / 2**20:.0f} MB")
    cfg = DataConfig(patch_size=args.window)
    catalog = Catalog.from_dict(json.loads(catalog_json.read_text()))
    stats = BandStats.load(stats_json)

    naive = naive_rate(path, args.window, min(seconds, 5))
    rows = [("naive random windows (rasterio, one handle)", f"{naive:,.0f}", f"RSS +{rss_mb() - baseline:.0f} MB")]
    tile_ms = tile_read_ms(path, min(seconds, 3))
    rows.append((f"whole-tile reads ({TILE}x{TILE}x{BANDS})", f"{1e3 / tile_ms:,.0f} tiles/s",
                 f"{tile_ms:.1f} ms each: read-bound ceiling {cfg.windows_per_read * 1e3 / tile_ms:,.0f} windows/s "
                 f"at windows_per_read={cfg.windows_per_read}"))
    peak = 0.0
    for kind in ("none", "mae"):
        ds = PretrainDataset(catalog, stats, cfg, build_views(kind, cfg, 2), seed=0)
        rate, n = dataset_rate(ds, 0, count, seconds)
        growth = rss_mb() - baseline
        peak = max(peak, growth)
        reads, cache = ds.raster_reader.counters, ds.raster_reader.cached_region_bytes / 2**20
        rows.append((f"PretrainDataset, view '{kind}'", f"{rate:,.0f}",
                     f"{n} windows, {reads['region_reads']} region reads, cache {cache:.0f} MB, RSS +{growth:.0f} MB"))
        ds.raster_reader.close()
    rows.append(("peak RSS growth over post-import baseline", f"{peak:,.0f} MB", f"baseline {baseline:.0f} MB"))

    width, vw = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"\n{size}x{size}x{BANDS} uint16 deflate, {TILE}x{TILE} tiles; {args.window}x{args.window} windows, "
          f"windows_per_read={cfg.windows_per_read}")
    print(f"| {'measure'.ljust(width)} | {'windows/s'.rjust(vw)} | notes |")
    print(f"|{'-' * (width + 2)}|{'-' * (vw + 2)}|-------|")
    for name, value, note in rows:
        print(f"| {name.ljust(width)} | {value.rjust(vw)} | {note} |")
    print("targets: PretrainDataset >= 1,500 windows/s in one process; RSS growth <= 300 MB")


if __name__ == "__main__":
    main()
