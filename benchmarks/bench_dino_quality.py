"""Representation quality after a short pretraining: DINO vs MAE (same wall-clock budget) vs random init.

    PYTHONPATH=. python benchmarks/bench_dino_quality.py [--minutes 4] [--threads 1] [--data DIR]

On EuroSAT-MS (``../shared/data/eurosat_ms_200``: 10 classes x 20 images, 13 bands, 64x64 px) each method pretrains
a ViT (depth 4, width 128, 4 heads, 4 px tokens) on 32x32 windows through the real ``geomed_ssl.pretrain`` for
about ``--minutes`` of training: a few calibration steps measure the step time, ``max_steps`` is set so the schedules
(lr, teacher momentum and temperature, weight decay) complete inside the budget, and a guard stops a run that
overruns it by 15 %. Each encoder then embeds every image as the mean CLS token of its four 32x32 quadrants (the
window size it was trained on), and 5-fold weighted k-NN (k=20, T=0.07; ``geomed_ssl.models.knn``) scores those
features, averaged over three fold assignments. Random init is the same architecture, untrained, normalised with
the same statistics. The labels are never seen by pretraining.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from geomed_ssl.checkpoint import load_encoder
from geomed_ssl.config import load_recipe
from geomed_ssl.data.stats import BandStats
from geomed_ssl.data.labelled import ImageDataset, scan_class_folders
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.models.knn import kfold_knn_accuracy
from geomed_ssl.train.pretrain import pretrain

EUROSAT_BANDS = "[B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A]"  # EuroSAT-MS stores B8A last
COMMON = [f"data.band_names={EUROSAT_BANDS}", "data.patch_size=32", "model.patch_size=4", "model.embed_dim=128",
          "model.depth=4", "model.num_heads=4", "train.batch_size=32", "train.preview_every=0", "train.log_every=1",
          "train.checkpoint_every=100000", "data.num_workers=0", "data.stats_windows=128", "train.base_lr=0.002"]
METHODS = {
    "dino": ("recipes/dino_sentinel2.yaml",
             ["data.global_crop_size=32", "data.local_crop_size=16", "data.n_local_crops=4", "method.out_dim=4096",
              "method.head_hidden_dim=512", "method.momentum_teacher=0.99"]),
    "mae": ("recipes/mae_sentinel2.yaml",
            ["method.decoder_embed_dim=64", "method.decoder_depth=2", "method.decoder_num_heads=4"]),
}


class Clock(L.Callback):
    """Wall time of the training steps (from the end of step ``skip``); stops the run past ``limit_s``."""

    def __init__(self, skip: int = 2, limit_s: float | None = None):
        self.skip, self.limit_s = skip, limit_s
        self.t0: float | None = None
        self.t_skip: float | None = None
        self.steps = 0
        self.elapsed = 0.0

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self.steps, self.elapsed = trainer.global_step, now - self.t0
        if trainer.global_step == self.skip:
            self.t_skip = now
        if self.limit_s is not None and self.elapsed > self.limit_s:
            trainer.should_stop = True

    def step_time(self) -> float:
        return (time.perf_counter() - self.t_skip) / max(1, self.steps - self.skip)


def run(method: str, data: Path, out: Path, minutes: float, extra: list[str]) -> tuple[Path, int, float]:
    """Calibrate, then pretrain for about ``minutes`` of training; (run dir, steps done, training minutes)."""
    recipe, own = METHODS[method]
    sets = [*COMMON, *own, *extra]
    cal = Clock(skip=2)
    pretrain(recipe, data, out / f"{method}_cal", overrides=[*sets, "train.max_steps=7", "train.warmup_steps=1"],
             progress=False, callbacks=[cal])
    step_s = cal.step_time()
    steps = max(10, int(minutes * 60 / step_s))
    clock = Clock(limit_s=minutes * 60 * 1.15)
    print(f"{method}: {step_s:.2f} s/step measured -> max_steps {steps}", flush=True)
    pretrain(recipe, data, out / method, overrides=[*sets, f"train.max_steps={steps}",
                                                   f"train.warmup_steps={max(1, steps // 10)}"],
             progress=False, callbacks=[clock])
    return out / method, clock.steps, clock.elapsed / 60


@torch.no_grad()
def quadrant_features(encoder: ViTEncoder, dataset: ImageDataset, window: int = 32) -> torch.Tensor:
    """Mean CLS token of the window x window tiles of each image: (N, D)."""
    encoder.eval()
    feats = []
    for i in range(len(dataset)):
        image = dataset.image(i)[0]  # (C, H, W)
        h, w = image.shape[1:]
        tiles = [image[:, r:r + window, c:c + window] for r in range(0, h - window + 1, window)
                 for c in range(0, w - window + 1, window)]
        x = torch.from_numpy(np.stack(tiles))  # (T, C, window, window)
        feats.append(encoder(x)[:, 0].mean(0))
    return torch.stack(feats)


def knn_score(encoder: ViTEncoder, data: Path, run_dir: Path) -> tuple[float, float]:
    """Mean and std over three fold assignments of 5-fold k-NN accuracy."""
    recipe = load_recipe(run_dir / "config.yaml")
    records, labels, _ = scan_class_folders(data, recipe.data)
    stats = BandStats.load(run_dir / "stats.json")
    dataset = ImageDataset(records, labels, stats, recipe.data, encoder.config.patch_size)
    feats = quadrant_features(encoder, dataset)
    accs = [kfold_knn_accuracy(feats, torch.from_numpy(labels), folds=5, seed=s, k=20, T=0.07) for s in range(3)]
    return float(np.mean(accs)), float(np.std(accs))


def final_row(run_dir: Path) -> dict[str, str]:
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/eurosat_ms_200")
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per method")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra override for both methods")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found; pass --data (a folder per class of 13-band EuroSAT-MS GeoTIFFs).")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        runs = {m: run(m, args.data, out, args.minutes, args.extra) for m in METHODS}
        cfg = load_encoder(runs["dino"][0]).config
        torch.manual_seed(0)
        results.append(("random init", 0, 0.0, knn_score(ViTEncoder(cfg),
                                                        args.data, runs["dino"][0]), {}))
        for m, (run_dir, steps, minutes) in runs.items():
            results.append((m, steps, minutes, knn_score(load_encoder(run_dir), args.data, run_dir),
                            final_row(run_dir)))

    print(f"\nEuroSAT-MS 200 (10 classes x 20), 5-fold weighted k-NN (k=20, T=0.07) on mean quadrant CLS features; "
          f"ViT depth 4, width 128, 4 px tokens, 32x32 windows, batch 32; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), budget {args.minutes:g} min per method")
    print(f"| {'encoder':12s} | {'steps':>5s} | {'train min':>9s} | {'s/step':>6s} | {'k-NN acc':>14s} | final loss |")
    print(f"|{'-' * 14}|{'-' * 7}|{'-' * 11}|{'-' * 8}|{'-' * 16}|{'-' * 12}|")
    for name, steps, minutes, (acc, sd), last in results:
        per = f"{minutes * 60 / steps:6.2f}" if steps else f"{'-':>6s}"
        loss = f"{float(last['loss']):10.3f}" if last.get("loss") else f"{'-':>10s}"
        print(f"| {name:12s} | {steps:5d} | {minutes:9.2f} | {per} | {acc:6.3f} ± {sd:.3f} | {loss} |")
    print("chance: 0.100")


if __name__ == "__main__":
    main()
