"""What the probe research scripts share: their command line and the compare task they score on (selection seeds
by default), with a RUN_DIR and ``none`` as the encoders."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

from geomed_ssl.compare import run as compare_run
from geomed_ssl.compare.options import NONE, Budget, CompareOptions
from geomed_ssl.compare.sources import load_sources, random_like, recipe_path
from geomed_ssl.compare.task import make_split


def probe_args(variants: str) -> argparse.Namespace:
    """RUN_DIR, --images, --labels, --seeds (default 10,11), --k (labels per class, 5), --variants."""
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--images", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--seeds", default="10,11")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--variants", default=variants)
    return ap.parse_args()


def class_probe_args(extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Image classification (class folders): RUN_DIR, --data, --seeds (default 10,11), --k (images per class, 5),
    --tag, and what ``extra`` adds."""
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", default="10,11")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tag", default="")
    if extra is not None:
        extra(ap)
    return ap.parse_args()


def probe_task(args: argparse.Namespace) -> tuple[Any, Any, list[Any], Iterator[tuple[Any, Any]]]:
    """(recipe, task, random splits as compare draws them, iterator of (source, load) for RUN_DIR then none);
    ``args.images`` and ``args.labels``, or ``args.data`` (class folders)."""
    opts = CompareOptions(encoders=[args.run_dir, "none"], budgets=[Budget(per_class=args.k)],
                          seeds=[int(s) for s in args.seeds.split(",")], split="random", protocols=["linear"],
                          baselines=[])
    recipe, task = compare_run._load_task(opts, recipe_path(opts, None), None, getattr(args, "images", None),
                                          getattr(args, "labels", None), getattr(args, "data", None), False)
    splits = [make_split(task, recipe, b, s, "random") for b in opts.budgets for s in opts.seeds]
    sources = ((src, compare_run._images(task, src.records, src.stats, recipe, tuple(src.encoder.config.patch_size)))
               for src in map(lambda s: with_weights(s, recipe.train.seed), load_sources(opts, recipe, task)))
    return recipe, task, splits, sources


def with_weights(src: Any, seed: int) -> Any:
    """``none``'s template (no weights) drawn as these scripts measured it: one initialisation from ``train.seed``
    for every split (``compare`` draws one per label seed); any other source as it is."""
    return src if src.name != NONE else dataclasses.replace(src, encoder=random_like(src.encoder, seed))


def oa_per_split(protocol: str, x: np.ndarray, task: Any, recipe: Any, splits: list[Any]) -> list[float]:
    """OA of ``compare``'s ``protocol`` classifier on per-image features ``x`` (n, F), one per split."""
    from geomed_ssl.compare.probes import classify, scores

    k = len(task.class_names)
    out = []
    for sp in splits:
        pred = classify(protocol, x[sp.train], task.values[sp.train], x[sp.test], sp.seed, None,
                        recipe.finetune.class_weights, k)
        out.append(scores(task.values[sp.test], pred, k, False, None)["oa"])
    return out


def tile_starts(points: np.ndarray, shape: tuple[int, ...], window: tuple[int, ...]) -> np.ndarray:
    """(n, nd) start of the tiling window holding each point (windows at multiples of the window, the last one
    moved back to end at the image's edge): the windows the probes read before 2026-12-02."""
    w = np.asarray(window)[None]
    return np.minimum((points // w) * w, np.maximum(np.asarray(shape)[None] - w, 0))
