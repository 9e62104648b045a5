"""End-to-end pretraining throughput vs model-only throughput (target: end-to-end >= 85 % of model-only).

    python benchmarks/bench_pretrain.py [--steps 30] [--size 2048] [--workers 0 1 2] [--tiny]

``--tiny`` (embed 32, depth 2, decoder 32/1/2, batch 8, 32-px windows, 300 steps by default) makes the training
loop's own per-step cost (Lightning, logging, checkpoints) the visible part.

Model-only: MAE steps (forward, backward, AdamW) on batches collated once up front. End-to-end: the real
`geomed_ssl.pretrain` run (catalog, block-aligned reads from a deflate-tiled 13-band GeoTIFF, normalisation, MAE
views, DataLoader workers, Lightning) timed from step 5 on. Both at the issue's config: embed 192, depth 12, heads 3,
decoder 128/4/4, 13x64x64 windows, patch 8, batch 64, fp32 on CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from geomed_ssl.config import load_recipe
from geomed_ssl.data.catalog import scan
from geomed_ssl.views.datasets import PretrainDataset, collate
from geomed_ssl.data.stats import compute_stats
from geomed_ssl.views.builder import build_views
from geomed_ssl.methods import build_method
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.train.pretrain import pretrain

BASE = ["data.sensor=sentinel2", "data.patch_size=64", "model.patch_size=8", "model.embed_dim=192", "model.depth=12",
        "model.num_heads=3", "method.decoder_embed_dim=128", "method.decoder_depth=4", "method.decoder_num_heads=4",
        "train.batch_size=64", "train.preview_every=0", "train.log_every=1", "data.stats_windows=64"]
TINY = ["data.sensor=sentinel2", "data.patch_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2",
        "model.num_heads=2", "method.decoder_embed_dim=32", "method.decoder_depth=1", "method.decoder_num_heads=2",
        "train.batch_size=8", "train.preview_every=0", "train.log_every=10", "data.stats_windows=64"]


def make_scene(folder: Path, size: int) -> Path:
    import rasterio
    from affine import Affine

    path = folder / f"scene_{size}.tif"
    if path.exists():
        return path
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / 256
    base = np.sin(yy * 3.1) + np.cos(xx * 2.3) + np.sin((xx + yy) * 7.7)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=13, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5100000), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as dst:
        for b in range(13):
            dst.write((3000 + 900 * base * (0.5 + b / 13) + 40 * b).astype(np.uint16), b + 1)
    return path


class StepTimer(L.Callback):
    """Wall time at each batch end (after the GPU's queued work); the rate from step ``skip`` on."""

    def __init__(self, skip: int = 5):
        self.skip, self.times = skip, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def images_per_s(self, batch: int) -> float:
        t = self.times[self.skip:]
        return batch * (len(t) - 1) / (t[-1] - t[0])


def warmup_steps(steps: int) -> int:
    """Steps left out of a rate (start-up: first batches, allocations): 5, or a quarter of a short run."""
    return min(5, steps // 4)


def batch_of(sets: list[str]) -> int:
    return int(next(s for s in sets if s.startswith("train.batch_size=")).split("=")[1])


def model_only(folder: Path, steps: int, sets: list[str] = BASE) -> float:
    recipe = load_recipe(None, sets)
    catalog = scan(folder, recipe.data)
    stats = compute_stats(catalog, recipe.data)
    ds = PretrainDataset(catalog, stats, recipe.data, build_views("mae", recipe.data, 2))
    batch = batch_of(sets)
    batches = [collate([ds[b * batch + i] for i in range(batch)]) for b in range(3)]
    enc = EncoderConfig.from_recipe(recipe.model, recipe.data, 13, catalog.band_names, catalog.wavelengths)
    method = build_method(recipe.method, enc, steps)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, betas=(0.9, 0.95))
    times = []
    for step in range(steps):
        out = method.training_loss(batches[step % 3], step, torch.Generator().manual_seed(step))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    t = times[warmup_steps(steps):]
    return batch * (len(t) - 1) / (t[-1] - t[0])


def end_to_end(folder: Path, steps: int, workers: int, out: Path, sets: list[str] = BASE) -> float:
    timer = StepTimer(warmup_steps(steps))
    pretrain(None, folder, out, overrides=[*sets, f"train.max_steps={steps}", f"data.num_workers={workers}",
                                           f"train.checkpoint_every={steps}"],
             overwrite=True, callbacks=[timer], progress=False)
    return timer.images_per_s(batch_of(sets))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="steps per measurement (default 30; 300 with --tiny); "
                    "at least 2")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tiny", action="store_true", help="a tiny MAE: the loop's own cost shows")
    args = ap.parse_args()
    sets = TINY if args.tiny else BASE
    steps = args.steps if args.steps is not None else 300 if args.tiny else 30
    if steps - warmup_steps(steps) < 2:
        ap.error(f"--steps {steps}: a rate needs at least 2 timed steps (the first {warmup_steps(steps)} are left out)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        make_scene(data, args.size)
        ref = model_only(data, steps, sets)
        rows = [("model only (pre-collated batches)", ref, 1.0)]
        for w in args.workers:
            ips = end_to_end(data, steps, w, Path(tmp) / f"run{w}", sets)
            rows.append((f"end to end, num_workers={w}", ips, ips / ref))
    what = ("13x32x32, patch 8, ViT 32/2/2, decoder 32/1/2, batch 8" if args.tiny else
            "13x64x64, patch 8, ViT 192/12/3, decoder 128/4/4, batch 64")
    print(f"\nMAE pretraining throughput, torch {torch.__version__}, {torch.get_num_threads()} threads, {what}, "
          f"fp32 CPU, {steps} steps\n")
    print(f"| {'setting':38s} | {'images/s':>9s} | {'of model-only':>13s} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 15}|")
    for name, ips, frac in rows:
        print(f"| {name:38s} | {ips:9.1f} | {frac:12.0%} |")


if __name__ == "__main__":
    main()
