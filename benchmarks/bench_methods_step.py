"""Step time and peak memory of every self-supervised method, next to the same step built from lightly's parts.

Each method is built as ``geomed-ssl pretrain`` builds it: its recipe (``recipes/NAME_sentinel2.yaml``, else the
first raster recipe its card names, else ``recipes/mae_sentinel2.yaml`` with ``method.name=NAME``) with the window,
batch and ViT-Ti set by ``--set``-style overrides, ``auto`` sizes fitted to a stated archive size (``--samples``
distinct windows, EuroSAT-MS's 27000 by default), ``build_method``, ``method.fit_to_data`` (BEiT's codebook), and the
one view builder on random 13-band windows collated as ``PretrainDataset`` + ``collate`` batch them (``index`` and
``meta`` included). A step is what ``train.module.PretrainModule`` + Lightning do: the step's generator and reseeded
torch RNG, ``method.training_loss``, backward, ``before_optimizer_step``, the method's weight-decay schedule, the
recipe's gradient clipping, AdamW over ``param_groups`` with the warmup-cosine lr, ``after_step`` (EMA updates,
queues), and the logs read back as floats. The batch is built once and reused; its views are not timed.

Rows "lightly: NAME" (simclr, byol, barlow_twins, vicreg) time the same configuration assembled from lightly's
components: its projection / prediction heads, loss and ``update_momentum`` + ``cosine_schedule`` on our same
``ViTEncoder`` (CLS token), the same views, the same AdamW groups, lr schedule and clipping. lightly is a test-only
dependency; without it those rows are skipped.

Every row runs in a fresh subprocess, so peak memory is per row: on CPU the growth of the process's peak resident
set (``ru_maxrss``) from after the imports to after the last step (model, optimiser state, batch, activations;
``tracemalloc`` does not see torch's allocations); on CUDA ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=. python benchmarks/bench_methods_step.py                      # every method, ViT-Ti, 64 px, batch 32
    PYTHONPATH=. python benchmarks/bench_methods_step.py --methods mae,simclr --steps 3 --warmup 1 --threads 1
    PYTHONPATH=. python benchmarks/bench_methods_step.py --device cuda --bf16
    python benchmarks/bench_methods_step.py --methods mae --steps 1 --warmup 0 --batch 2 --size 32   # smoke check

Measured
--------
2026-12-02 (UTC), this project's shared CPU machine (2 cores, ~6 engineers; no GPU lent to this task), torch
2.14.1+cu130, lightly 1.6.0. A reduced configuration so that all 25 rows fit in ~17 minutes: the
issue's ViT-Ti, 13 bands, 64 px, batch 32, but 1 thread, 1 warmup step and the median of only 2 timed steps::

    PYTHONPATH=. python benchmarks/bench_methods_step.py --steps 2 --warmup 1 --threads 1

1-minute load average 6.0-12.0 during the run (10.7 at its start 03:09, 6.3 at its end 03:26), so other processes
took a large, varying share of the cores. inpainting failed to build in that run (a bug fixed in the same branch,
commit "inpainting: build MAEDecoder ..."); it and vicreg / lightly: vicreg (lightly's VICReg head import, fixed
here) are from a second run at 03:30-03:32 (load 7.6-7.9) with ``--methods inpainting,vicreg`` and the same flags.
vicreg took 5.754 s/step in the first run and 4.872 in the second: at this load and 2 steps, rows differ by ~20 %
from run to run, so the lightly ratios (0.97, 0.99, 1.02, 1.23) say "no slower than lightly", not more.
Peak RSS +MiB: growth of the row's process's peak RSS from after its imports (model, AdamW state, batch,
activations). ``context`` encodes two small patches per window, hence its short step.

| method                 | median s/step | min s/step | images/s | peak RSS +MiB | params M | vs ours |
|------------------------|---------------|------------|----------|---------------|----------|---------|
| barlow_twins           |         7.242 |      6.938 |      4.4 |          1329 |    14.29 |         |
| lightly: barlow_twins  |         7.013 |      6.859 |      4.6 |          1266 |    14.29 |    0.97 |
| beit                   |         3.417 |      3.100 |      9.4 |           687 |     5.60 |         |
| byol                   |         8.362 |      7.766 |      3.8 |          1190 |     7.47 |         |
| lightly: byol          |         8.296 |      7.557 |      3.9 |          1170 |     7.47 |    0.99 |
| cae                    |         2.592 |      2.571 |     12.3 |           594 |     7.44 |         |
| context                |         0.239 |      0.237 |    133.9 |           288 |     5.60 |         |
| cross_band             |         6.825 |      6.459 |      4.7 |          1124 |     5.66 |         |
| deepcluster            |         8.890 |      8.509 |      3.6 |          1437 |     7.31 |         |
| dino                   |        13.432 |     12.758 |      2.4 |          1771 |    14.81 |         |
| inpainting             |         2.593 |      2.397 |     12.3 |           740 |     6.03 |         |  (2nd run)
| jigsaw                 |         2.117 |      2.066 |     15.1 |           543 |     5.97 |         |
| mae                    |         1.765 |      1.598 |     18.1 |           506 |     6.42 |         |
| maskfeat               |         2.994 |      2.844 |     10.7 |           702 |     5.59 |         |
| moco_v2                |         3.570 |      3.344 |      9.0 |           750 |     6.16 |         |
| moco_v3                |         7.783 |      7.337 |      4.1 |          1280 |    11.67 |         |
| rotation               |         2.783 |      2.639 |     11.5 |           651 |     5.60 |         |
| simclr                 |         6.444 |      6.345 |      5.0 |          1088 |     6.16 |         |
| lightly: simclr        |         6.568 |      6.508 |      4.9 |          1089 |     6.16 |    1.02 |
| simmim                 |         2.334 |      2.104 |     13.7 |           692 |     5.66 |         |
| simsiam                |         5.659 |      5.320 |      5.7 |          1238 |    16.39 |         |
| swav                   |         8.290 |      7.921 |      3.9 |          1345 |     6.54 |         |
| vicreg                 |         5.754 |      5.346 |      5.6 |          1288 |    14.29 |         |
| vicreg                 |         4.872 |      4.494 |      6.6 |          1296 |    14.29 |         |  (2nd run)
| lightly: vicreg        |         5.981 |      5.796 |      5.4 |          1273 |    14.29 |    1.23 |  (2nd run)
| vicreg_dense           |         6.179 |      5.483 |      5.2 |          1158 |     5.68 |         |

vs ours: lightly's median s/step / ours (above 1: ours is faster).

2026-12-06 (UTC), the same machine and flags, with I-JEPA added (``--methods ijepa,mae,cae,moco_v3 --steps 2 --warmup
1 --threads 1``; the cores otherwise idle, so these rows are faster than the table above and are compared with each
other only): ijepa 0.715 s/step (44.8 images/s, peak RSS +459 MiB, 4.06 M parameters), mae 0.538 (+504 MiB), cae
0.858 (+593 MiB), moco_v3 2.646 (+1266 MiB). I-JEPA costs 1.33x MAE's step: its context encoder sees 11-50 % of the
8 x 8 tokens (34 % on average, trimmed to the batch's fewest) where MAE's sees 25 %, its momentum encoder all of them
without gradient, and its predictor is narrow (96 wide at ViT-Ti).

2026-12-06 (UTC), the same flags with MSN added (``--methods msn,mae,moco_v3 --steps 2 --warmup 1 --threads 1``, the
cores otherwise idle): msn 1.459 s/step (21.9 images/s, peak RSS +853 MiB, 4.48 M parameters), mae 0.598 (+505 MiB),
moco_v3 2.721 (+1276 MiB). MSN's recipe takes 4 local crops, here 32 px: 2.4x MAE's step and about half MoCo v3's (the
masked crop keeps 85 % of its tokens, and the target crop runs without gradient).
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LIGHTLY = ("simclr", "byol", "barlow_twins", "vicreg")
BANDS = 13


def recipe_for(name: str, args: argparse.Namespace) -> Any:
    """The method's recipe with the benchmark's window, batch and ViT-Ti, its settings checked and ``auto`` sizes
    fitted to ``args.samples`` distinct windows (as ``pretrain`` fits them to the scanned data)."""
    from geomed_ssl.config import load_recipe
    from geomed_ssl.methods.registry import method_class, with_method_settings

    own = ROOT / f"recipes/{name}_sentinel2.yaml"
    card = [ROOT / r for r in method_class(name).card.recipes if "sentinel2" in r]
    path = own if own.is_file() else (card[0] if card else ROOT / "recipes/mae_sentinel2.yaml")
    sets = [f"data.patch_size={args.size}", "model.patch_size=8", "model.embed_dim=192", "model.depth=12",
            "model.num_heads=3", f"train.batch_size={args.batch}", "data.global_crop_size=null",
            "data.local_crop_size=null"]  # local crops: half the global crop (32 px at 64 px windows)
    if method_class(name).views.shift:  # two unresized crops at a known offset: the window holds crop + shift
        sets[6] = f"data.global_crop_size={args.size - 8}"
    if name == "simmim":
        sets.append(f"method.mask_patch_size={min(16, args.size)}")
    import yaml

    raw_name = (yaml.safe_load(path.read_text()).get("method") or {}).get("name")
    if raw_name != name:
        sets.append(f"method.name={name}")
    recipe = load_recipe(path, sets)
    return with_method_settings(recipe, str(path), samples=args.samples), path


class Windows:
    """Sample ``i``: a random normalised 13-band window through ``view``, with ``index`` and ``meta`` as
    ``PretrainDataset.__getitem__`` returns it (a pure function of ``i``)."""

    def __init__(self, view: Any, size: int, length: int) -> None:
        self.view, self.size, self.length = view, size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        import numpy as np
        import torch

        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([0, i])
        image = rng.standard_normal((BANDS, self.size, self.size)).astype(np.float32)  # (C, H, W)
        valid = np.ones((self.size, self.size), dtype=bool)  # (H, W)
        sample = self.view(image, valid, np.random.default_rng([1, i]))
        sample["meta"] = {"path": "random", "paths": ["random"], "crs": None, "band_names": [],
                          "window": [0, 0, self.size, self.size], "transform": None, "affine": None}
        sample["index"] = torch.tensor(i)
        return sample


def to_device(x: Any, device: Any) -> Any:
    import torch

    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [to_device(v, device) for v in x]
    return x


def optimiser(model: Any, recipe: Any, skip: set[str]) -> tuple[Any, Any]:
    """AdamW over ``param_groups`` with the warmup-cosine lr, as ``PretrainModule.configure_optimizers``."""
    import torch

    from geomed_ssl.methods.schedules import warmup_cosine
    from geomed_ssl.train.module import param_groups

    t = recipe.train
    peak = t.base_lr * t.batch_size / 256
    opt = torch.optim.AdamW(param_groups(model, t.weight_decay, skip), lr=peak, betas=tuple(t.betas))
    ratio = t.min_lr / peak if peak > 0 else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, t.warmup_steps, t.max_steps, ratio))
    return opt, sched


def ours(name: str, recipe: Any, args: argparse.Namespace, device: Any) -> tuple[Callable[[int], float], Any]:
    """One training step of the registered method, as the trainer runs it."""
    import torch

    from geomed_ssl.bands.names import sensor_profile
    from geomed_ssl.methods import build_method
    from geomed_ssl.methods.base import mix_seed
    from geomed_ssl.models.encoder import EncoderConfig
    from geomed_ssl.train.module import step_seed
    from geomed_ssl.views.builder import build_views
    from geomed_ssl.views.datasets import collate

    t = recipe.train
    profile = sensor_profile("sentinel2")
    names, wavelengths = list(profile), list(profile.values())
    torch.manual_seed(t.seed)
    enc_cfg = EncoderConfig.from_recipe(recipe.model, recipe.data, BANDS, names, wavelengths, None)
    method = build_method(recipe.method, enc_cfg, t.max_steps)
    view = build_views(method.views, recipe.data, 2, recipe.augment, patch_size=recipe.model.patch_size,
                       wavelengths=wavelengths)
    windows = Windows(view, args.size, 10**6)
    method.fit_to_data(windows, t.seed)
    method.to(device).train()
    batch = to_device(collate([windows[i] for i in range(args.batch)]), device)
    opt, sched = optimiser(method, recipe, method.no_weight_decay())
    params = [p for g in opt.param_groups for p in g["params"]]

    def step(i: int) -> float:
        seed = step_seed(t.seed, i)
        torch.manual_seed(mix_seed(seed, 0))
        with autocast(args, device):
            out = method.training_loss(batch, i, torch.Generator().manual_seed(seed))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        method.before_optimizer_step(i)
        wd = method.weight_decay(i)
        if wd is not None:
            for group in opt.param_groups:
                if group.get("decays"):
                    group["weight_decay"] = wd
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
        method.after_step(i)
        {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.logs.items()}  # as the trainer logs
        return float(out.loss.detach())

    return step, method


def lightly_model(name: str, recipe: Any, enc: Any) -> tuple[Any, Callable[[Any, Any, int], Any], Callable[[int],
                                                                                                          None]]:
    """(modules, loss(x1, x2, step), after_step(step)) of ``name`` assembled from lightly's heads and losses."""
    import copy

    import torch
    from lightly import loss as L
    from lightly.models import modules as M
    from lightly.models.modules import heads
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    s, d = recipe.method.settings, enc.embed_dim
    nets = torch.nn.ModuleDict({"encoder": enc})
    ema: Callable[[int], None] | None = None
    if name == "simclr":
        nets["head"] = M.SimCLRProjectionHead(d, s["proj_hidden_dim"], s["proj_dim"], s["proj_layers"])
        crit = L.NTXentLoss(temperature=s["temperature"])
        loss = lambda a, b, i: crit(*nets["head"](enc(torch.cat([a, b]))[:, 0]).chunk(2))  # noqa: E731
    elif name == "barlow_twins":
        nets["head"] = M.BarlowTwinsProjectionHead(d, s["proj_hidden_dim"], s["proj_dim"])
        crit = L.BarlowTwinsLoss(lambda_param=s["lambda_offdiag"])
        loss = lambda a, b, i: crit(*nets["head"](enc(torch.cat([a, b]))[:, 0]).chunk(2))  # noqa: E731
    elif name == "vicreg":
        nets["head"] = heads.VICRegProjectionHead(d, s["proj_hidden_dim"], s["proj_dim"], 3)
        crit = L.VICRegLoss(s["invariance_weight"], s["variance_weight"], s["covariance_weight"])
        loss = lambda a, b, i: crit(*nets["head"](enc(torch.cat([a, b]))[:, 0]).chunk(2))  # noqa: E731
    elif name == "byol":
        nets["head"] = M.BYOLProjectionHead(d, s["proj_hidden_dim"], s["proj_dim"])
        nets["pred"] = M.BYOLPredictionHead(s["proj_dim"], s["proj_hidden_dim"], s["proj_dim"])
        target = torch.nn.ModuleDict({"encoder": copy.deepcopy(enc), "head": copy.deepcopy(nets["head"])})
        deactivate_requires_grad(target)
        nets["target"] = target
        crit = L.NegativeCosineSimilarity()

        def loss(a: Any, b: Any, i: int) -> Any:
            x = torch.cat([a, b])  # (2B, C, H, W)
            p1, p2 = nets["pred"](nets["head"](enc(x)[:, 0])).chunk(2)
            with torch.no_grad():
                t1, t2 = target["head"](target["encoder"](x)[:, 0]).chunk(2)
            return 0.5 * (crit(p1, t2) + crit(p2, t1))

        def byol_ema(i: int) -> None:
            m = cosine_schedule(i, recipe.train.max_steps, s["momentum"], 1.0)
            update_momentum(enc, target["encoder"], m)
            update_momentum(nets["head"], target["head"], m)

        ema = byol_ema
    else:
        raise ValueError(f"no lightly counterpart for {name}; those with one: {', '.join(LIGHTLY)}")
    return nets, loss, ema or (lambda i: None)


def lightly_step(name: str, recipe: Any, args: argparse.Namespace, device: Any) -> tuple[Callable[[int], float], Any]:
    """The same step (views, encoder, optimiser, schedule, clipping) with lightly's heads, loss and EMA."""
    import torch

    from geomed_ssl.methods.registry import method_class
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
    from geomed_ssl.views.builder import build_views
    from geomed_ssl.views.datasets import collate

    t = recipe.train
    torch.manual_seed(t.seed)
    enc_cfg = EncoderConfig.from_recipe(recipe.model, recipe.data, BANDS, None, None, None)
    nets, loss_fn, after = lightly_model(name, recipe, ViTEncoder(enc_cfg))
    view = build_views(method_class(name).views, recipe.data, 2, recipe.augment, patch_size=recipe.model.patch_size)
    windows = Windows(view, args.size, 10**6)
    nets.to(device).train()
    batch = to_device(collate([windows[i] for i in range(args.batch)]), device)
    x1, x2 = batch["views"]["global"]
    skip = {f"encoder.{n}" for n in nets["encoder"].no_weight_decay()}
    opt, sched = optimiser(nets, recipe, skip)
    params = [p for g in opt.param_groups for p in g["params"]]

    def step(i: int) -> float:
        with autocast(args, device):
            loss = loss_fn(x1, x2, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
        after(i)
        return float(loss.detach())

    return step, nets


def autocast(args: argparse.Namespace, device: Any) -> Any:
    """bf16 autocast around the forward (Lightning's ``bf16-mixed``), or nothing."""
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()


def rss_mib() -> float:
    """This process's peak resident set so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build and time one row (``NAME`` or ``lightly: NAME``) in this process."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = row.removeprefix("lightly: ")
    recipe, path = recipe_for(name, args)
    base = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, model = (lightly_step if row.startswith("lightly: ") else ours)(name, recipe, args, device)
    for i in range(args.warmup):
        step(i)
    times, losses = [], []
    for i in range(args.warmup, args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses.append(step(i))  # reading the loss back synchronises the device
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mib() - base)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"row": row, "recipe": str(path.relative_to(ROOT)), "times": times, "peak_mib": peak,
            "params_m": trained / 1e6, "loss": losses[-1] if losses else None}


def rows_for(methods: list[str], lightly: bool) -> list[str]:
    rows = []
    for m in methods:
        rows.append(m)
        if lightly and m in LIGHTLY:
            rows.append(f"lightly: {m}")
    return rows


def child_argv(row: str, args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", row, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--batch", str(args.batch), "--size", str(args.size),
            "--threads", str(args.threads), "--device", args.device, "--samples", str(args.samples)]
    return argv + (["--bf16"] if args.bf16 else [])


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS +MiB"
    print(f"ViT-Ti (192 / 12 / 3, patch 8), {BANDS} bands, {args.size} px windows, batch {args.batch}, device "
          f"{args.device}{' bf16' if args.bf16 else ''}, {args.threads} thread(s); median of {args.steps} timed "
          f"steps after {args.warmup} warmup; auto sizes fitted to {args.samples} windows")
    print(f"| {'method':<22} | {'median s/step':>13} | {'min s/step':>10} | {'images/s':>8} | {mem:>13} | "
          f"{'params M':>8} | {'vs ours':>7} |")
    print(f"|{'-' * 24}|{'-' * 15}|{'-' * 12}|{'-' * 10}|{'-' * 15}|{'-' * 10}|{'-' * 9}|")
    medians: dict[str, float] = {}
    for r in results:
        if "error" in r:
            print(f"| {r['row']:<22} | failed: {r['error']}")
            continue
        med = statistics.median(r["times"])
        medians[r["row"]] = med
        ours_med = medians.get(r["row"].removeprefix("lightly: "))
        vs = f"{med / ours_med:7.2f}" if r["row"].startswith("lightly: ") and ours_med else ""
        print(f"| {r['row']:<22} | {med:13.3f} | {min(r['times']):10.3f} | {args.batch / med:8.1f} | "
              f"{r['peak_mib']:13.0f} | {r['params_m']:8.2f} | {vs:>7} |")
    print("vs ours: lightly's median s/step / ours (above 1: ours is faster).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="", help="comma-separated registry names (default: every method)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="window size in px (a multiple of the 8 px token)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as train.precision=bf16-mixed")
    p.add_argument("--samples", type=int, default=27000, help="distinct windows that `auto` sizes are fitted to")
    p.add_argument("--no-lightly", action="store_true", help="skip the lightly rows")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row in this process, print JSON
    args = p.parse_args()
    if args.size % 8:
        p.error(f"--size must be a multiple of 8 (the token size), got {args.size}")
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)))
        return

    from geomed_ssl.methods.registry import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or sorted(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(sorted(METHODS))}")
    lightly = not args.no_lightly
    if lightly:
        import importlib.util

        if importlib.util.find_spec("lightly") is None:
            print("lightly is not installed: the 'lightly: NAME' rows are skipped", file=sys.stderr)
            lightly = False
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = []
    for row in rows_for(methods, lightly):
        proc = subprocess.run(child_argv(row, args), capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results.append({"row": row, "error": last[:200]})
        else:
            results.append(json.loads(line[len("RESULT "):]))
        print(f"done: {row}", file=sys.stderr, flush=True)
    print_table(results, args)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
