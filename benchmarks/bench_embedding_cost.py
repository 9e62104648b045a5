"""Step time and memory of each patch embedding with the hyperspectral recipe on Indian Pines' 200 bands.

Each row is ``recipes/mae_hyperspectral.yaml`` plus ``--set``-style overrides (the embedding, its group width /
chunk, ``model.tokens_per_position``), loaded and checked by ``load_recipe`` + ``with_method_settings`` and built by
``EncoderConfig.from_recipe`` + ``build_method`` as ``geomed-ssl pretrain`` builds it: dense VICReg
(``vicreg_dense``), 2-px tokens, 32-px crops of 40-px windows, embed 64, depth 3, batch 8. The windows are cut at
random from the bundled Indian Pines cube (145x145x200, standardised per band) and go through the method's own view
builder (two shifted crops, weak spectral augmentation) and ``collate``; ``views CPU-s`` is that cost per batch (in
``pretrain`` a data worker pays it beside the training thread). A step is what ``PretrainModule`` + Lightning do
(the helpers of ``bench_methods_step.py``): the step's seeded generator, ``training_loss``, backward, the recipe's
gradient clipping, AdamW over ``param_groups`` with the warmup-cosine lr, ``after_step``; each timed step gets its
own batch. The bands' centre wavelengths are AVIRIS' (``aviris_92av3c_bands``, matched by band name as ``pretrain``
matches them), which the ``wavelength`` embedding reads.

Every row runs in a fresh one-threaded subprocess (``torch.set_num_threads(1)``; run under ``OMP_NUM_THREADS=1``).
CPU-s/step is ``time.process_time`` of that process around the step (robust to other processes sharing the
cores); wall-s/step is ``time.perf_counter``. Both are medians over the timed steps. ``peak RSS +MiB`` is the growth
of the process's peak resident set (``ru_maxrss``) from after the model and batches are built to after the last
step (activations, gradients, AdamW state); ``params`` counts trainable parameters. The last column projects the
recipe's ``train.max_steps`` (its header names the count) from CPU-s/step: the training thread's CPU time (views
excluded, see above).

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_embedding_cost.py          # default rows
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_embedding_cost.py --rows plain,grouped-w20-k1 --steps 3
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_embedding_cost.py --rows grouped-w4 --steps 1 --warmup 0

Measured
--------
2026-12-02 04:46-05:10 UTC, this project's shared 2-core CPU machine (no GPU lent), torch 2.14.1, 1-minute load
average 7-10 (other engineers' runs: CPU-s are the robust column, and memory-bound rows such as the pooled ones are
still inflated by ~1.5x against a quiet machine, e.g. grouped-w4-k1 took 0.44 CPU-s/step at load 2 with an earlier, slower
version of the pool)::

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_embedding_cost.py --steps 5 --warmup 1
    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_embedding_cost.py --rows grouped-w8,grouped-w4 \
        --steps 1 --warmup 0    # the last rows: one step each (its first, so a little high)

| row | units/pos | tokens/crop | CPU-s/step | wall-s/step | views CPU-s/batch | peak RSS +MiB | params M | 1000 steps (CPU min) |
|---|---|---|---|---|---|---|---|---|
| plain | 1 | 256 | 0.201 | 0.319 | 0.076 | 134 | 0.301 | 3.4 |
| wavelength | 1 | 256 | 0.230 | 0.369 | 0.068 | 135 | 0.340 | 3.8 |
| grouped-w4-k1 | 50 | 256 | 0.635 | 0.922 | 0.074 | 377 | 0.311 | 10.6 |
| grouped-w8-k1 | 25 | 256 | 0.356 | 0.545 | 0.055 | 230 | 0.308 | 5.9 |
| grouped-w20-k1 | 10 | 256 | 0.271 | 0.562 | 0.064 | 164 | 0.306 | 4.5 |
| grouped-w20-k2 | 10 | 512 | 0.546 | 1.116 | 0.057 | 204 | 0.306 | 9.1 |
| spectral-c1-k1 | 200 | 256 | 2.609 | 5.360 | 0.066 | 779 | 0.267 | 43.5 |
| spectral-c4-k1 | 50 | 256 | 0.580 | 1.198 | 0.057 | 371 | 0.268 | 9.7 |
| spectral-c8-k1 | 25 | 256 | 0.348 | 0.710 | 0.056 | 236 | 0.269 | 5.8 |
| grouped-w20 | 10 | 2560 | 6.988 | 14.126 | 0.066 | 585 | 0.302 | 116.5 |
| grouped-w8 | 25 | 6400 | 48.659 | 198.729 | 0.059 | 1134 | 0.304 | 811.0 |
| grouped-w4 | 50 | 12800 | 177.378 | 914.643 | 0.056 | 2296 | 0.307 | 2956.3 |

The recipe's defaults are the -w8-k1 / -c8-k1 rows (``model.group_width: 8``, ``model.spectral_chunk: 8``,
``model.tokens_per_position: 1``): ~6 training-thread CPU-minutes per 1000 steps (the table above was measured when
the recipe ran 1000 steps; at its 3000 steps now, ~18 CPU-minutes, over the 15-minute budget on 2 cores, which the
recipe's ``plain`` embedding meets). Per-band spectral tokens
(``spectral_chunk: 1``) stay over it even pooled: the embedding makes and pools 200 tokens per position. Before
``model.tokens_per_position`` existed every grouped / spectral row was one of the unpooled kind (the last rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

RECIPE = ROOT / "recipes" / "mae_hyperspectral.yaml"

# label -> overrides on top of the recipe; "-wG": model.group_width G, "-cC": model.spectral_chunk C, "-kK":
# model.tokens_per_position K (no -k: one token per band group / chunk, the layout before the setting existed)
ROWS: dict[str, list[str]] = {
    "plain": ["model.embedding=plain"],
    "wavelength": ["model.embedding=wavelength"],
    "grouped-w4-k1": ["model.embedding=grouped", "model.group_width=4", "model.tokens_per_position=1"],
    "grouped-w8-k1": ["model.embedding=grouped", "model.group_width=8", "model.tokens_per_position=1"],
    "grouped-w20-k1": ["model.embedding=grouped", "model.group_width=20", "model.tokens_per_position=1"],
    "grouped-w20-k2": ["model.embedding=grouped", "model.group_width=20", "model.tokens_per_position=2"],
    "spectral-c1-k1": ["model.embedding=spectral", "model.spectral_chunk=1", "model.tokens_per_position=1"],
    "spectral-c4-k1": ["model.embedding=spectral", "model.spectral_chunk=4", "model.tokens_per_position=1"],
    "spectral-c8-k1": ["model.embedding=spectral", "model.spectral_chunk=8", "model.tokens_per_position=1"],
    "grouped-w20": ["model.embedding=grouped", "model.group_width=20", "model.tokens_per_position=null"],
    "grouped-w8": ["model.embedding=grouped", "model.group_width=8", "model.tokens_per_position=null"],
    "grouped-w4": ["model.embedding=grouped", "model.group_width=4", "model.tokens_per_position=null"],
}
DEFAULT_ROWS = [r for r in ROWS if r not in ("grouped-w8", "grouped-w4")]  # minutes per step: run them on their own


def load_cube() -> tuple[Any, list[str]]:
    """Indian Pines (200, 145, 145) float32, standardised per band, and its band names."""
    import numpy as np
    import rasterio

    from geomed_ssl.sample import IMAGE

    with rasterio.open(IMAGE) as src:
        cube = src.read().astype(np.float32)
        names = [d or f"B{i + 1:03d}" for i, d in enumerate(src.descriptions)]
    flat = cube.reshape(cube.shape[0], -1)
    cube = (cube - flat.mean(1)[:, None, None]) / (flat.std(1)[:, None, None] + 1e-6)
    return cube, names


def build(row: str, args: argparse.Namespace) -> tuple[Any, Any, list[Any], float]:
    """The row's recipe, method and ``args.warmup + args.steps`` batches, and the views' CPU-s per batch."""
    import numpy as np
    import torch

    from geomed_ssl.config import load_recipe
    from geomed_ssl.bands.names import aviris_92av3c_bands
    from geomed_ssl.methods import build_method
    from geomed_ssl.methods.registry import with_method_settings
    from geomed_ssl.models.encoder import EncoderConfig
    from geomed_ssl.views.builder import build_views
    from geomed_ssl.views.datasets import collate

    recipe = load_recipe(RECIPE, ROWS[row] + list(args.set))
    cube, names = load_cube()
    c, h, w = cube.shape
    size = recipe.data.patch_size
    recipe = with_method_settings(recipe, str(RECIPE), samples=(h // size) * (w // size))
    wavelengths = dict(zip(*aviris_92av3c_bands()))  # what pretrain reads from the band names, in µm
    wavelengths = [wavelengths[n] for n in names]
    t = recipe.train
    torch.manual_seed(t.seed)
    enc_cfg = EncoderConfig.from_recipe(recipe.model, recipe.data, c, names, wavelengths, None)
    method = build_method(recipe.method, enc_cfg, t.max_steps)
    view = build_views(method.views, recipe.data, 2, recipe.augment, patch_size=recipe.model.patch_size,
                       wavelengths=wavelengths)
    rng = np.random.default_rng(0)
    batches, spent = [], []
    for _ in range(args.warmup + args.steps):
        start = time.process_time()
        samples = []
        for i in range(t.batch_size):
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            window = np.ascontiguousarray(cube[:, y:y + size, x:x + size])  # (C, S, S)
            sample = view(window, np.ones((size, size), dtype=bool), np.random.default_rng([len(batches), i]))
            sample["index"] = torch.tensor(len(batches) * t.batch_size + i)
            samples.append(sample)
        batches.append(collate(samples))
        spent.append(time.process_time() - start)
    return recipe, method, batches, statistics.median(spent)


def stepper(recipe: Any, method: Any, batches: list[Any]) -> Callable[[int], float]:
    """One optimiser step on ``batches[i]``, as the trainer runs it."""
    import torch
    from bench_methods_step import optimiser

    from geomed_ssl.methods.base import mix_seed
    from geomed_ssl.train.module import step_seed

    t = recipe.train
    method.train()
    opt, sched = optimiser(method, recipe, method.no_weight_decay())
    params = [p for g in opt.param_groups for p in g["params"]]

    def step(i: int) -> float:
        seed = step_seed(t.seed, i)
        torch.manual_seed(mix_seed(seed, 0))
        out = method.training_loss(batches[i], i, torch.Generator().manual_seed(seed))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        method.before_optimizer_step(i)
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
        method.after_step(i)
        {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.logs.items()}  # as logged
        return float(out.loss.detach())

    return step


def run_one(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build and time one row in this process."""
    import torch
    from bench_methods_step import rss_mib

    torch.set_num_threads(1)
    recipe, method, batches, views_cpu = build(row, args)
    cfg = method.encoder.cfg
    step = stepper(recipe, method, batches)
    base = rss_mib()
    for i in range(args.warmup):
        step(i)
    cpu, wall, losses = [], [], []
    for i in range(args.warmup, args.warmup + args.steps):
        c0, w0 = time.process_time(), time.perf_counter()
        losses.append(step(i))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    units = cfg.units_per_position
    per_pos = cfg.tokens_per_position if cfg.pooled else units
    crop = recipe.data.global_crop_size or recipe.data.patch_size
    positions = (crop // recipe.model.patch_size) ** 2  # the 2D crops the encoder sees
    return {"row": row, "cpu": cpu, "wall": wall, "peak_mib": rss_mib() - base, "views_cpu": views_cpu,
            "units": units, "tokens": per_pos * positions, "max_steps": recipe.train.max_steps,
            "params_m": sum(p.numel() for p in method.parameters() if p.requires_grad) / 1e6, "loss": losses[-1]}


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"recipes/mae_hyperspectral.yaml on Indian Pines (200 bands), 1 thread; median of {args.steps} timed "
          f"steps after {args.warmup} warmup{'; --set ' + ' '.join(args.set) if args.set else ''}")
    print("| row | units/pos | tokens/crop | CPU-s/step | wall-s/step | views CPU-s/batch | peak RSS +MiB | params M "
          f"| {next((r['max_steps'] for r in results if 'max_steps' in r), 'recipe')} steps (CPU min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['row']} | failed: {r['error']} |")
            continue
        cpu, wall = statistics.median(r["cpu"]), statistics.median(r["wall"])
        print(f"| {r['row']} | {r['units']} | {r['tokens']} | {cpu:.3f} | {wall:.3f} | {r['views_cpu']:.3f} | "
              f"{r['peak_mib']:.0f} | {r['params_m']:.3f} | {cpu * r['max_steps'] / 60:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--set", action="append", default=[], help="extra recipe override for every row (repeatable)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this row here and print its JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    results = []
    for row in rows:
        argv = [sys.executable, str(Path(__file__).resolve()), "--one", row, "--steps", str(args.steps),
                "--warmup", str(args.warmup)] + [a for s in args.set for a in ("--set", s)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode or not lines:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results.append({"row": row, "error": err})
        else:
            results.append(json.loads(lines[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print_table(results, args)


if __name__ == "__main__":
    main()
