"""Steady pretraining rate of a recipe, as `geomed-ssl pretrain` runs it, per DataLoader worker count.

    PYTHONPATH=. python benchmarks/bench_recipe_rate.py                       # workers 0 and 3, 400 steps
    PYTHONPATH=. python benchmarks/bench_recipe_rate.py --steps 400 --workers 0 3 6 --profile prof.txt
    PYTHONPATH=. python benchmarks/bench_recipe_rate.py --recipe recipes/mae_sentinel2.yaml --data DIR --set k=v

By default the bundled Indian Pines scene (145x145x200) with ``recipes/mae_hyperspectral.yaml``. Each row is one
``pretrain`` call (catalog, statistics, DataLoader workers, Lightning; no checkpoints written until the end) timed by
``bench_pretrain.StepTimer`` at each batch end (after a CUDA synchronise on a GPU), its rate taken from step 50 (a quarter of the
steps when there are fewer than 200) to the last.
``--profile`` runs the last worker count again under ``cProfile`` (the main process only: the pin-memory thread
shows, the workers do not) and writes the stats sorted by own time and by cumulative time.

Measured
--------
2026-12-04, one lent NVIDIA H200 (16 CPU cores, torch 2.11, bf16-mixed), 400 steps, the defaults. Two calls, each
on a fresh machine, whose rates differ by ~25 % for the same code, so compare rows within a call only:

| call | code | workers | steady it/s |
|------|------|---------|-------------|
| 1 | before a2291a6 (meta walked by the device transfer and the pin-memory thread) | 3 | 31.0 |
| 1 | meta kept off the device transfer only | 3 | 33.5 |
| 1 | same | 0 | 9.3 |
| 1 | same, ``train.batch_size=32`` | 3 | 7.6 (243 windows/s against 268 at batch 8) |
| 2 | a2291a6 (``BatchMeta``) | 3 | 26.2 |
| 2 | a2291a6 | 6 | 26.5 |
| 2 | a2291a6, Lightning's ``self.log`` made a no-op | 3 | 29.1 |

The same 80-step check on the 2-core CPU machine (``--steps 80 --workers 0 2``): 7.4 it/s in the main process, 6.1
with two workers competing for the two cores.

The main process is the bottleneck from three workers on: its step (``training_loss`` ~11 ms, backward ~8 ms,
Lightning's logging ~1 ms a key, under cProfile) is Python and kernel-launch time for a network this small. In the
workers a window costs ~5.6 ms on one core of the 2-core CPU machine, 3.5 ms of it the two crops' Gaussian noise
draws (200 bands x 32 x 32 each).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
from pathlib import Path

import torch

from geomed_ssl.sample import SAMPLE_DIR
from geomed_ssl.train.pretrain import pretrain
from bench_pretrain import StepTimer  # benchmarks/ is the script's folder, so on sys.path


def one_run(args: argparse.Namespace, data: Path, out: Path, workers: int, profile: str | None = None) -> float:
    timer = StepTimer(skip=min(50, args.steps // 4))
    sets = [f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}", f"data.num_workers={workers}",
            *args.set]
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    pretrain(args.recipe, data, out, overrides=sets, overwrite=True, callbacks=[timer], progress=False)
    if prof:
        prof.disable()
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        Path(profile).write_text(text.getvalue())
    return timer.images_per_s(1)  # one "image" a step: steps per second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/mae_hyperspectral.yaml")
    ap.add_argument("--data", type=Path, help="data folder (default: a copy of the bundled Indian Pines scene)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--set", action="append", default=[], help="recipe override k=v (repeatable)")
    ap.add_argument("--profile", help="write cProfile stats of one more run (the last worker count) to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "ip"
            data.mkdir()
            (data / "indian_pines.tif").symlink_to(SAMPLE_DIR / "indian_pines.tif")
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"{args.recipe} on {data}, {args.steps} steps, {device}")
        print("| workers | steady it/s |\n|---------|-------------|")
        for w in args.workers:
            print(f"| {w} | {one_run(args, data, Path(tmp) / f'run{w}', w):.1f} |", flush=True)
        if args.profile:
            one_run(args, data, Path(tmp) / "prof", args.workers[-1], args.profile)
            print(f"cProfile stats: {args.profile}")


if __name__ == "__main__":
    main()
