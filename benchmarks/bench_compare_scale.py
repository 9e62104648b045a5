"""Memory and time of ``geomed-ssl compare`` on one large scene, phase by phase.

Builds a 13-band uint16 GeoTIFF of SIZE x SIZE pixels (tiled, 10 m, UTM) with a land-cover map of five classes in
300-px fields, labelled sparsely (0.2 % of the pixels, spread over the scene), densely (every pixel) or in a few
surveyed fields (five 150 x 150 px squares), then runs ``compare none`` (a tiny ViT at random initialisation,
its linear probe and fine-tune, and the random forest baseline) on it, and prints one row per phase: its wall time
and its peak resident memory (Linux: the peak is reset at the start of each phase).

    python benchmarks/bench_compare_scale.py --size 6000 --labels sparse --work /tmp/bench_scale

Measured on 2026-12-05 (2-core CPU, ``OMP_NUM_THREADS=2``; 6000 x 6000 x 13, sparse labels, test_fraction 0.1):
peak 9.2 GB in the random forest's features before the slabbed baselines, 3.6 GB after, with the same results.csv.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

from geomed_ssl.compare import baselines, features, run
from geomed_ssl.compare.options import Budget, CompareOptions

BANDS, FIELD = 13, 300


def make_scene(folder: Path, size: int, labels: str) -> tuple[Path, Path]:
    """``folder/img/scene.tif`` and ``folder/labels_<labels>.tif`` (made once; reused when present)."""
    import rasterio
    from rasterio.transform import from_origin

    image, label = folder / "img" / "scene.tif", folder / f"labels_{labels}.tif"
    profile = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633", tiled=True, blockxsize=512,
                   blockysize=512, transform=from_origin(500000, 5000000, 10, 10))
    rows = np.arange(size)[:, None] // FIELD
    cls = lambda r0, r1: ((rows[r0:r1] * 7 + np.arange(size)[None] // FIELD * 3) % 5 + 1)  # noqa: E731
    rng = np.random.default_rng(0)
    if not image.is_file():
        image.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(image, "w", count=BANDS, dtype="uint16", **profile) as dst:
            for b in range(BANDS):
                for r0 in range(0, size, 1000):
                    r1 = min(size, r0 + 1000)
                    v = 1000 + 100 * b + 200 * cls(r0, r1) + rng.normal(0, 50, (r1 - r0, size))
                    dst.write(v.astype(np.uint16), b + 1, window=((r0, r1), (0, size)))
    if not label.is_file():
        with rasterio.open(label, "w", count=1, dtype="uint8", nodata=0, **profile) as dst:
            for r0 in range(0, size, 1000):
                r1 = min(size, r0 + 1000)
                lab = cls(r0, r1).astype(np.uint8)
                if labels == "sparse":
                    lab[rng.random(lab.shape) >= 0.002] = 0
                elif labels == "fields":
                    keep = np.zeros(lab.shape, bool)
                    for k in range(5):
                        top, left = (np.random.default_rng(k).integers(0, size - 150, 2))
                        rr = slice(max(top, r0) - r0, max(min(top + 150, r1) - r0, 0))
                        keep[rr, left:left + 150] = True
                    lab[~keep] = 0
                dst.write(lab, 1, window=((r0, r1), (0, size)))
    return image.parent, label


def peak_gb() -> float:
    """The process's peak resident memory since the last reset (GB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1e6
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def timed(rows: list[tuple[str, float, float]], module: object, name: str, label: str) -> None:
    """Wrap ``module.name`` so each call adds (label, seconds, peak GB) to ``rows``."""
    inner = getattr(module, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        reset_peak()
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        rows.append((label, time.perf_counter() - t0, peak_gb()))
        return out

    setattr(module, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--labels", choices=["sparse", "dense", "fields"], default="sparse")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_compare_scale"))
    ap.add_argument("--test-fraction", type=float, default=0.1)
    args = ap.parse_args()
    images, labels = make_scene(args.work, args.size, args.labels)
    rows: list[tuple[str, float, float]] = []
    timed(rows, run, "_load_task", "read the labels, build the table")
    timed(rows, run, "make_split", "draw the budget (make_split)")
    timed(rows, features.SegmentFeatures, "_compute", "features (encoder, then rf)")
    timed(rows, baselines, "fit_pca", "rf: fit the PCA")
    timed(rows, run, "frozen_scores", "fit and score a frozen probe")
    timed(rows, run, "finetune_scores", "fine-tune and evaluate")
    out = args.work / f"cmp_{args.labels}_{args.size}"
    options = CompareOptions(encoders=["none"], budgets=[Budget(per_class=10)], seeds=[0], protocols=["linear"],
                             baselines=["rf"])
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "mae_sentinel2.yaml"
    t0 = time.perf_counter()
    run.run_compare(options, out=out, images=images, labels=labels, recipe=recipe, overwrite=True, progress=False,
                    overrides=["model.depth=2", "model.embed_dim=32", "model.num_heads=2",
                               f"labels.test_fraction={args.test_fraction}"])
    total = time.perf_counter() - t0
    print(f"\ncompare on {args.size}x{args.size}x{BANDS}, {args.labels} labels ({labels}), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}: {total:.0f} s in all\n")
    print("| phase | seconds | peak GB |\n|---|---|---|")
    for label, seconds, peak in rows:
        print(f"| {label} | {seconds:.1f} | {peak:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
