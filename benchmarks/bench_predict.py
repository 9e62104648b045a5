"""Whole-scene prediction throughput and memory: a generated NxN 13-band uint16 deflate-tiled GeoTIFF predicted
with streaming sliding windows (small conv net by default), printed as a table.

    python benchmarks/bench_predict.py                 # 8192 x 8192 (generated once under --data-dir)
    python benchmarks/bench_predict.py --size 4096 --device cuda --probabilities
    python benchmarks/bench_predict.py --ft-dir FT_DIR --threads 1   # a fine-tuned model, as `predict` runs it

With ``--ft-dir`` the model, its window and its normalisation come from a ``finetune segment`` output folder
exactly as ``geomed-ssl predict`` loads them (the scene's bands must match the model's: 13 generic band names).
"CPU seconds" is the process time of the prediction (all threads), which a shared machine does not inflate.

Measured (2026-12-02) on the 13-band 8192 x 8192 scene with ``--ft-dir`` of a ``finetune segment`` with
recipes/mae_hyperspectral.yaml (2-px tokens, depth 3, width 64, 36-px windows, 92,416 windows):

| head | threads | machine | wall s | Mpx/s | CPU-s | peak RSS growth |
|---|---|---|---|---|---|---|
| linear (the recipe's) | 2 | idle 2 cores | 271 | 0.25 | 512 | 173 MiB |
| UNETR | 1 | shared, load 4-7 | 824 | 0.08 | 502 | 216 MiB |

2026-12-03, the recipe's 40-px windows (74,529 windows), the head of ``finetune segment ... --head probe`` (the
recipe's ``finetune.probe: propagate``: a linear head on blocks 1-2 interpolated to pixels), a fine-tune of random
init on a generated 128 x 128 13-band scene; two test runs shared the cores for about 2 of the minutes:

| head | threads | machine | wall s | Mpx/s | CPU-s | peak RSS growth |
|---|---|---|---|---|---|---|
| probe (propagate) | 2 | 2 cores, mostly idle | 398 | 0.17 | 675 | 162 MiB |

Peak RSS growth is sampled from /proc/self/status every 5 ms during prediction, over a baseline taken just
before it (scene generation is done strip by strip, so it does not raise the baseline).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from geomed_ssl.data.stats import BandStats
from geomed_ssl.inference.predict import predict_raster

GEN_ROWS = 512  # rows generated and written per step


def scene_path(data_dir: Path, size: int, bands: int) -> Path:
    """Generate (once) a smooth structured uint16 scene with a nodata border; returns its path."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path = data_dir / f"scene_{size}x{size}_{bands}b.tif"
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".partial-" + path.name)
    profile = dict(driver="GTiff", height=size, width=size, count=bands, dtype="uint16", nodata=0, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", crs="EPSG:32633", BIGTIFF="IF_SAFER",
                   transform=Affine(10, 0, 500000, 0, -10, 5200000))
    xx = np.arange(size, dtype=np.float32)[None, :] / 512
    gains = np.linspace(0.5, 1.5, bands, dtype=np.float32)[:, None, None]
    t0 = time.perf_counter()
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, GEN_ROWS):
            n = min(GEN_ROWS, size - r)
            yy = np.arange(r, r + n, dtype=np.float32)[:, None] / 512
            base = np.sin(2 * np.pi * (0.7 * yy + 1.3 * xx)) + np.sin(2 * np.pi * (2.1 * yy - 0.4 * xx) + 1.0)
            block = (3000 + 900 * gains * base[None] + 40 * np.arange(bands)[:, None, None]).astype(np.uint16)
            block[:, :, :64] = 0  # a nodata band on the left edge
            dst.write(block, window=Window(0, r, size, n))
    os.replace(tmp, path)
    print(f"generated {path} in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
    return path


def scene_stats(bands: int) -> BandStats:
    """Statistics matching the generator's value range (good enough for a throughput run)."""
    names = [f"band_{i}" for i in range(1, bands + 1)]
    mean = [3000.0 + 40 * b for b in range(bands)]
    return BandStats(names, mean, [900.0] * bands, [m - 2000 for m in mean], [m + 2000 for m in mean],
                     [1] * bands)


def small_model(bands: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(bands, 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, classes, 1)).eval()


def encoder_model(path: str, bands: int, classes: int) -> torch.nn.Module:
    """A segmentation model on an exported encoder (untrained decoder: timing only)."""
    from geomed_ssl.checkpoint import load_encoder

    try:
        from geomed_ssl.models.seg_decoder import SegmentationModel
    except ImportError:
        raise SystemExit("--encoder needs geomed_ssl.models.seg_decoder (issue 4), which is not there yet.") from None
    enc = load_encoder(path)
    if enc.config.in_chans != bands:
        raise SystemExit(f"the encoder takes {enc.config.in_chans} bands; pass --bands {enc.config.in_chans}.")
    depth = enc.config.depth
    layers = sorted({max(0, depth // 4 - 1), max(0, depth // 2 - 1), max(0, 3 * depth // 4 - 1), depth - 1})
    return SegmentationModel(enc, classes, layers).eval()


def finetuned_model(ft_dir: str, bands: int, device: str) -> tuple[torch.nn.Module, BandStats, list[int], int]:
    """A ``finetune segment`` FT_DIR's model, normalisation, window and class count, as ``predict`` loads them."""
    from geomed_ssl.inference.finetuned import load_run

    model, meta, _ = load_run(ft_dir, device)
    stats = BandStats.from_dict(meta["encoder"]["stats"], source=f"model {ft_dir}")
    if len(stats.band_names) != bands:
        raise SystemExit(f"the model takes {len(stats.band_names)} bands; pass --bands {len(stats.band_names)}.")
    window = list(meta["window"])
    return model.eval(), stats, window, len(meta["classes"])


class RssSampler:
    """Peak resident set size (bytes) seen by a background thread while active."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def metric_table(rows: list[tuple[str, str]]) -> None:
    """Print (metric, value) rows as a Markdown table."""
    width = max(len(k) for k, _ in rows)
    print(f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--bands", type=int, default=13)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--blend", default="gaussian", choices=["gaussian", "linear", "constant"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--probabilities", default="no", choices=["no", "float32", "uint8"])
    ap.add_argument("--encoder", default=None, help="encoder export (RUN_DIR) to time instead of the small conv net")
    ap.add_argument("--ft-dir", default=None, help="finetune segment output folder to time (window from it)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "geomed_bench_predict"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    src = scene_path(Path(args.data_dir), args.size, args.bands)
    stats = scene_stats(args.bands)
    if args.ft_dir:
        model, stats, args.window, args.classes = finetuned_model(args.ft_dir, args.bands, args.device)
    else:
        model = encoder_model(args.encoder, args.bands, args.classes) if args.encoder else \
            small_model(args.bands, args.classes)
    model = model.to(args.device)
    rows_cols = args.window if isinstance(args.window, list) else [args.window, args.window]
    batch = torch.zeros(args.batch_size, args.bands, *rows_cols, device=args.device)
    base = RssSampler.rss()
    with RssSampler() as fwd, torch.inference_mode():  # warm-up outside the timing; the model's own memory
        torch.softmax(model(batch), 1)
    model_mb = (fwd.peak - base) / 2**20
    del batch
    proba = False if args.probabilities == "no" else args.probabilities
    out_dir = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    base = RssSampler.rss()
    cpu0 = time.process_time()
    with RssSampler() as sampler:
        summary = predict_raster(model, src, out_dir / "scene_pred.tif", stats, window=args.window,
                                 overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
                                 num_classes=args.classes, probabilities=proba, device=args.device)
    if str(args.device).startswith("cuda"):
        torch.cuda.synchronize()
    cpu_s = time.process_time() - cpu0
    px = args.size * args.size
    full = px * args.classes * 4
    out_mb = sum(p.stat().st_size for p in out_dir.iterdir()) / 2**20
    shutil.rmtree(out_dir, ignore_errors=True)
    rows = [
        ("scene", f"{args.size}x{args.size}x{args.bands} uint16 deflate 256-tiled"),
        ("model", f"fine-tuned {args.ft_dir}" if args.ft_dir else "encoder " + args.encoder if args.encoder
         else "3-layer conv (32 ch)"),
        ("window / overlap / blend", f"{args.window} / {args.overlap} / {args.blend}"),
        ("batch / device / threads", f"{args.batch_size} / {args.device} / {torch.get_num_threads()}"),
        ("windows", f"{summary['windows']}"),
        ("probabilities", args.probabilities),
        ("seconds", f"{summary['seconds']:.1f}"),
        ("throughput (Mpx/s)", f"{px / summary['seconds'] / 1e6:.2f}"),
        ("CPU seconds (process time)", f"{cpu_s:.1f}"),
        ("Mpx per CPU-second", f"{px / max(cpu_s, 1e-9) / 1e6:.3f}"),
        ("peak RSS growth (MiB, sampled)", f"{(sampler.peak - base) / 2**20:.0f}"),
        ("model forward, one batch, measured before (MiB)", f"{model_mb:.0f}"),
        ("strip buffers (MiB)", f"{summary['strip_bytes'] / 2**20:.1f}"),
        ("writer tile-row buffers (MiB)", f"{summary['writer_buffer_bytes'] / 2**20:.1f}"),
        ("full-scene float32 x K (MiB, never allocated)", f"{full / 2**20:.0f}"),
        ("output size (MiB)", f"{out_mb:.1f}"),
    ]
    metric_table(rows)


if __name__ == "__main__":
    main()
