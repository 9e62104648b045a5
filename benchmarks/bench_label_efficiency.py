"""Label efficiency (issue 12's targets): ``geomed-ssl compare`` on the bundled Indian Pines scene, on
EuroSAT-MS 200, on the five-date Sentinel-2 Slovenia tile and on a Sentinel-2-like resampling of Indian Pines, for
the encoders given, with random init and the baselines side by side.

    python benchmarks/bench_label_efficiency.py --ip RUN_DIR [RUN_DIR ...] [--eurosat RUN_DIR ...]
        [--slovenia RUN_DIR ...] [--s2like RUN_DIR ...] [--seeds selection|report]
        [--datasets ip,eurosat,slovenia,s2like]
        [--ip-splits random,blocks] [--protocol linear,finetune] [--baselines rf] [--out runs/bench_label_efficiency]
        [--set k=v ...]

- Indian Pines (``geomed_ssl/sample``): 5 labelled pixels per class, random and blocks splits, tested on every other
  labelled pixel (random) or on the held-out blocks (blocks); default baselines: rf, random_conv.
- EuroSAT-MS 200 (``../shared/data/eurosat_ms_200``): 5 images per class, the linear probe (frozen multi-layer
  features); default baselines: rf, random_conv, band_stats.
- Sentinel-2 Slovenia (``../shared/data/sentinel2_slovenia``, five dates sharing ``lulc_mask.tif``): 10 labelled
  pixels per class, frozen linear and k-NN probes, random init also fine-tuned with a per-token linear head (150
  steps, CE: ``SLOVENIA_FINETUNE``); default baselines: rf, random_conv. E.g. a RUN_DIR of
  ``recipes/vicreg_dense_sentinel2.yaml`` (docs/label_efficiency.md).
- Sentinel-2-like Indian Pines (built under ``--out`` from the bundled cube by ``research/s2_like.py``: the 13 MSI
  bands as Gaussian responses over the AVIRIS bands, one date, the 16-class map): 10 labelled pixels per class,
  frozen linear, k-NN and propagate probes, the Slovenia fine-tune settings; default baselines: rf, random_conv.
  Its RUN_DIRs are pretrained on that scene (``--data OUT/s2_like_scene``).

Seeds: ``--seeds selection`` (10, 11) is for choosing hyperparameters; ``--seeds report`` (0, 1, 2) only once
they are fixed (issue 12: never tune on the reported seeds). ``none`` (random init of the first encoder's
architecture) is always in; give ``none`` alone with ``--ip-recipe`` / ``--eurosat-recipe``.

Prints one table per dataset (encoder x protocol rows, one column per split, mean ± std over seeds; baselines in
the same table) and the pretraining budget of each RUN_DIR: its last logged step and the wall time from the run
folder's creation (``.geomed-ssl.json``) to the last line of ``metrics.csv`` (a resumed run counts its pause too).
Every compare folder is kept under ``--out`` (``results.csv``, ``summary.md`` with paired differences,
``curve.png``) and is resumed when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from geomed_ssl.compare.options import parse_options
from geomed_ssl.compare.report import best_protocols, grouped
from geomed_ssl.compare.run import run_compare
from geomed_ssl.errors import GeomedError
from geomed_ssl.sample import LABELS, SAMPLE_DIR
from research.s2_like import build as build_s2_like  # benchmarks/ is the script's folder, so on sys.path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEEDS = {"selection": "10,11", "report": "0,1,2"}
SLOVENIA_FINETUNE = ["finetune.head=linear", "finetune.max_steps=150", "finetune.warmup_steps=15", "finetune.loss=ce"]


def pretraining_budget(run_dir: Path) -> str:
    """``steps N, ~M min wall`` of a pretrain RUN_DIR (or what is missing)."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return "no metrics.csv (an exported encoder?)"
    with metrics.open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]
    text = f"steps {max(steps) if steps else 0}"
    manifest = run_dir / ".geomed-ssl.json"
    if manifest.is_file():
        created = datetime.fromisoformat(json.loads(manifest.read_text())["created"]).timestamp()
        text += f", ~{(metrics.stat().st_mtime - created) / 60:.1f} min wall"
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        cfg = yaml.safe_load(config.read_text())
        text += (f" (method {cfg['method']['name']}, batch {cfg['train']['batch_size']}, "
                 f"accelerator {cfg['train']['accelerator']})")
    return text


def label(encoder: str, pretrained: list[str]) -> str:
    if encoder in pretrained:
        return f"pretrained [{pretrained.index(encoder)}]" if len(pretrained) > 1 else "pretrained"
    return {"none": "random init"}.get(encoder, encoder)


def print_table(title: str, results: dict[str, list[dict[str, str]]], metric: str, pretrained: list[str]) -> None:
    """One Markdown table: encoder / protocol rows, one column per variant (split), mean ± std over seeds."""
    cols = list(results)
    cells: dict[tuple[str, str], dict[str, str]] = {}
    stars: dict[str, dict[str, str]] = {}
    for col, rows in results.items():
        groups = grouped(rows, metric)
        stars[col] = best_protocols(groups)
        for (enc, proto), by_budget in groups.items():
            values = [v for seeds in by_budget.values() for v in seeds.values()]
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            mark = "*" if stars[col].get(enc) == proto else ""
            cells.setdefault((enc, proto), {})[col] = f"{np.mean(values):.3f} ± {sd:.3f}{mark} (n={len(values)})"
    print(f"\n### {title} ({metric}, mean ± std over seeds; * best protocol of the encoder)\n")
    print("| encoder | protocol | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    order = sorted(cells, key=lambda k: (k[0] not in pretrained, k[0] != "none", k[0], k[1]))
    for enc, proto in order:
        print(f"| {label(enc, pretrained)} | {proto} | " + " | ".join(cells[(enc, proto)].get(c, "-") for c in cols)
              + " |")


def compare_one(encoders: list[str], out: Path, seeds: str, split: str, protocol: str, baselines: str | None,
                recipe: str | None, overrides: list[str], budget: str = "5", **data: Path
                ) -> tuple[list[dict[str, str]], str]:
    options = parse_options(encoders, budget, None, seeds, split, protocol, baselines, False)
    start = time.time()
    try:
        result = run_compare(options, out=out, recipe=recipe, overrides=overrides, progress=False, **data)
    except GeomedError as err:  # compare's own words name its options: say which of this script's they are
        raise SystemExit(f"{out.name}: {err}\n(this script passes --<dataset>-recipe as compare's --recipe and "
                         "--set as its --set)") from None
    print(f"  {out}: {result.runs_done} runs in {(time.time() - start) / 60:.1f} min")
    return result.rows, result.metric


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ip", nargs="*", default=[], help="Indian Pines encoders: RUN_DIRs and/or none.")
    ap.add_argument("--eurosat", nargs="*", default=[], help="EuroSAT-MS encoders: RUN_DIRs and/or none.")
    ap.add_argument("--slovenia", nargs="*", default=[], help="Sentinel-2 Slovenia encoders: RUN_DIRs and/or none.")
    ap.add_argument("--s2like", nargs="*", default=[], help="Sentinel-2-like Indian Pines encoders: RUN_DIRs / none.")
    ap.add_argument("--seeds", choices=tuple(SEEDS), default="selection")
    ap.add_argument("--datasets", default="ip,eurosat,slovenia,s2like")
    ap.add_argument("--ip-splits", default="random,blocks")
    ap.add_argument("--protocol", default=None, help="default: linear,finetune (IP), linear (EuroSAT), linear,knn "
                    "(Slovenia), linear,knn,propagate (S2-like)")
    ap.add_argument("--baselines", default=None, help="default: every baseline that applies")
    ap.add_argument("--ip-recipe", default=None)
    ap.add_argument("--eurosat-recipe", default=None)
    ap.add_argument("--slovenia-recipe", default=None)
    ap.add_argument("--s2like-recipe", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_label_efficiency"))
    ap.add_argument("--shared-data", type=Path, default=SHARED, help=f"the shared sample data (default {SHARED})")
    args = ap.parse_args()
    shared = args.shared_data
    for name, folder in (("eurosat", shared / "eurosat_ms_200"), ("slovenia", shared / "sentinel2_slovenia")):
        if name in args.datasets and getattr(args, name) and not folder.is_dir():
            ap.error(f"--{name} needs {folder}, which is not there (give --shared-data, or leave --{name} out)")
    seeds = SEEDS[args.seeds]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    print(f"label efficiency, {args.seeds} seeds ({seeds}), 5 labels per class / images per class "
          "(Slovenia, S2-like: 10)")
    tables = []
    if "ip" in datasets and args.ip:
        results, metric = {}, "oa"
        for split in args.ip_splits.split(","):
            results[f"{split} split"], metric = compare_one(
                args.ip, args.out / f"ip_{split}_{args.seeds}", seeds, split, args.protocol or "linear,finetune",
                args.baselines, args.ip_recipe, args.overrides, images=SAMPLE_DIR, labels=LABELS)
        tables.append(("Indian Pines (bundled), 5 labelled pixels per class", results, metric, args.ip))
    if "eurosat" in datasets and args.eurosat:
        rows, metric = compare_one(args.eurosat, args.out / f"eurosat_{args.seeds}", seeds, "random",
                                   args.protocol or "linear", args.baselines, args.eurosat_recipe, args.overrides,
                                   data=shared / "eurosat_ms_200")
        tables.append(("EuroSAT-MS 200, 5 images per class", {"random split": rows}, metric, args.eurosat))
    if "slovenia" in datasets and args.slovenia:
        scene = shared / "sentinel2_slovenia"
        rows, metric = compare_one(args.slovenia, args.out / f"slovenia_{args.seeds}", seeds, "random",
                                   args.protocol or "linear,knn", args.baselines, args.slovenia_recipe,
                                   [*SLOVENIA_FINETUNE, *args.overrides], budget="10", images=scene,
                                   labels=scene / "lulc_mask.tif")
        tables.append(("Sentinel-2 Slovenia, 5 dates, 10 labelled pixels per class", {"random split": rows}, metric,
                       args.slovenia))
    if "s2like" in datasets and args.s2like:
        images, labels = build_s2_like(args.out / "s2_like_scene")
        rows, metric = compare_one(args.s2like, args.out / f"s2like_{args.seeds}", seeds, "random",
                                   args.protocol or "linear,knn,propagate", args.baselines, args.s2like_recipe,
                                   [*SLOVENIA_FINETUNE, *args.overrides], budget="10", images=images, labels=labels)
        tables.append(("Sentinel-2-like Indian Pines, 10 labelled pixels per class", {"random split": rows}, metric,
                       args.s2like))
    for title, results, metric, encoders in tables:
        print_table(title, results, metric, [e for e in encoders if e.lower() != "none"])
        for enc in encoders:
            if enc.lower() != "none":
                print(f"- pretraining of {label(enc, [e for e in encoders if e.lower() != 'none'])} ({enc}): "
                      f"{pretraining_budget(Path(enc))}")


if __name__ == "__main__":
    main()
