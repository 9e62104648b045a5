"""Label efficiency of every SSL method at an equal wall-clock pretraining budget, through ``geomed-ssl compare``.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_methods_label_efficiency.py [--budget 45]
        [--methods mae,dino,...] [--deadline-minutes 22] [--out /tmp/bench_methods]

Each method pretrains on EuroSAT-MS 200 (13-band 64x64 patches, class folders, no band descriptions) with
``recipes/mae_sentinel2.yaml`` and ``--set data.sensor=null``, on ONE shared small architecture (ViT embed 64,
depth 4, 4 heads, patch 8, windows of 64 px, batch 32, warmup 10 steps, the recipe's base_lr 1.5e-3), each method
with its own ``method.*`` defaults. The budget is the wall clock of the whole ``geomed-ssl pretrain`` process
(startup, data scan and any method setup such as BEiT's k-means included): it runs with train.max_steps=10**6 under
``timeout -s TERM <budget>``; the toolkit saves a checkpoint on SIGTERM and exports ``encoder/`` at the end of the
run, which is checked. Then ONE ``geomed-ssl compare`` scores every encoder that exported, plus ``none`` (random
init, also fine-tuned, with finetune.max_steps=100) and the band_stats / random_conv baselines, at 5 labels per
class, seeds 0,1,2, protocols linear and knn (features computed once per encoder). Methods that fail to start are
listed with their one-line error. vicreg_dense is skipped: it learns per-pixel (dense) features for segmentation,
not image-level classification as EuroSAT needs.

Measured: (see the bottom of this docstring; filled in from a run)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "eurosat_ms_200"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/eurosat_ms_200")
PRIORITY = ["mae", "dino", "simclr", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg", "swav", "deepcluster",
            "simmim", "maskfeat", "beit", "cae", "inpainting", "rotation", "jigsaw", "context", "cross_band", "moco_v2"]
SKIPPED = {"vicreg_dense": "skipped: dense per-pixel features for segmentation, not image classification"}
ARCH = ["data.sensor=null", "data.num_workers=0", "data.patch_size=64", "model.embed_dim=64", "model.depth=4",
        "model.num_heads=4", "model.patch_size=8", "train.batch_size=32", "train.max_steps=1000000",
        "train.warmup_steps=10", "train.checkpoint_every=1000000", "train.checkpoint_minutes=0",
        "train.preview_every=0", "train.accelerator=cpu"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "geomed_ssl.cli", *args]


def last_error(text: str) -> str:
    """The most telling line of a failed run's output: its ``error:`` line, else its last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:160]


def steps_of(run: Path) -> int | None:
    """The step the exported encoder was saved at (``encoder/config.json``)."""
    meta = run / "encoder" / "config.json"
    if not meta.is_file():
        return None
    found = json.loads(meta.read_text())
    return found.get("step", found.get("extra", {}).get("step") if isinstance(found.get("extra"), dict) else None)


def pretrain(method: str, out: Path, budget: int) -> dict:
    """Pretrain ``method`` for ``budget`` s of wall clock; the run folder, steps reached and any error."""
    run = out / "runs" / method
    cmd = ["timeout", "-s", "TERM", "-k", "90", f"{budget}s",
           *cli("pretrain", str(ROOT / "recipes" / "mae_sentinel2.yaml"), "--data", str(DATA), "--out", str(run),
                *[a for kv in [*ARCH, f"method.name={method}"] for a in ("--set", kv)])]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    took = time.time() - t0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / f"{method}.log").write_text(proc.stdout + proc.stderr)
    steps = steps_of(run)
    row = {"method": method, "run": str(run), "rc": proc.returncode, "seconds": round(took, 1), "steps": steps,
           "error": ""}
    if steps is None:
        row["error"] = last_error(proc.stdout + proc.stderr)
    print(f"{method:14s} rc={proc.returncode:4d} {took:6.1f}s steps={steps} {row['error']}", flush=True)
    return row


def summarise(cmp_dir: Path, rows: list[dict]) -> str:
    """mean ± std of oa over seeds per encoder and protocol, with each method's steps (or error)."""
    import numpy as np

    results: dict[tuple[str, str], list[float]] = {}
    with open(cmp_dir / "results.csv") as f:
        for r in csv.DictReader(f):
            results.setdefault((r["encoder"], r["protocol"]), []).append(float(r["oa"]))
    by_run = {r["run"]: r for r in rows}
    protos = sorted({p for _, p in results})
    lines = [f"| encoder | steps in budget | {' | '.join(protos)} |", f"|---|---|{'---|' * len(protos)}"]
    names = list(dict.fromkeys(e for e, _ in results))
    for enc in names:
        meta = by_run.get(enc)
        label = meta["method"] if meta else enc
        steps = str(meta["steps"]) if meta else "-"
        cells = []
        for p in protos:
            v = results.get((enc, p))
            cells.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f} (n={len(v)})" if v else "")
        lines.append(f"| {label} | {steps} | {' | '.join(cells)} |")
    for r in rows:
        if r["steps"] is None:
            lines.append(f"| {r['method']} | failed | {r['error']} |")
    for m, why in SKIPPED.items():
        lines.append(f"| {m} | - | {why} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=45, help="seconds of wall clock per pretrain process")
    ap.add_argument("--methods", default=",".join(PRIORITY))
    ap.add_argument("--deadline-minutes", type=float, default=22.0, help="start no new pretrain after this")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_methods_label_efficiency"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"budget {args.budget} s wall clock per method; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"load average at start {os.getloadavg()}", flush=True)
    start = time.time()
    rows = []
    for method in args.methods.split(","):
        if method in SKIPPED:
            continue
        if time.time() - start > args.deadline_minutes * 60:
            print(f"deadline reached: {method} and later not run", flush=True)
            break
        rows.append(pretrain(method, args.out, args.budget))
    print(f"load average after pretraining {os.getloadavg()}", flush=True)
    encoders = [r["run"] for r in rows if r["steps"] is not None]
    cmp_dir = args.out / "compare"
    cmd = cli("compare", *encoders, "none", "--data", str(DATA), "--labels-per-class", "5", "--seeds", "0,1,2",
              "--protocol", "linear,knn", "--set", "finetune.max_steps=100", "--out", str(cmp_dir))
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (args.out / "logs" / "compare.log").write_text(proc.stdout + proc.stderr)
    print(f"compare rc={proc.returncode} in {time.time() - t0:.0f} s; load average {os.getloadavg()}", flush=True)
    if proc.returncode != 0:
        print(last_error(proc.stdout + proc.stderr))
        return
    print(summarise(cmp_dir, rows))
    print("\n" + (cmp_dir / "summary.md").read_text())


if __name__ == "__main__":
    main()
