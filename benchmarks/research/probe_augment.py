"""Frozen linear probe on a RUN_DIR with augmented training pixels (selection seeds only), as `compare` draws them.

    python benchmarks/research/probe_augment.py RUN_DIR --images IMG_DIR --labels LABELS [--seeds 10,11] [--k 5] \
        [--variants plain,d8,shift,d8shift,scale,central]

Each labelled training pixel's features are also taken from transformed views of its image (``d8``: the 8 flips /
quarter turns; ``shift``: 4 offsets of the window tiling; ``scale``: the raw spectrum x 0.9 and x 1.1) as extra
training rows with the same label; test pixels keep the plain view. ``central``: every pixel (training and test)
takes its features from the one of 4 half-window tilings it sits most centrally in. RUN_DIR and ``none`` (its
architecture at random initialisation) are scored alike; one JSON line per (encoder, seed, variant).
The results in docs/label_efficiency.md were measured on the probes' tiled features of before 2026-12-02
(``probe_windows.py``'s ``tiles``); the script now reads the features ``predict`` blends, as ``compare`` does.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from geomed_ssl.compare.features import SegmentFeatures
from geomed_ssl.compare.probes import classify, scores
from geomed_ssl.models.probe import encoder_points, probe_layers
from probe_common import probe_args, probe_task, tile_starts  # beside this script

VIEWS = {"plain": [(0, 0, 1.0)], "d8": [(t, 0, 1.0) for t in range(8)], "shift": [(0, s, 1.0) for s in range(4)],
         "d8shift": [(t, s, 1.0) for t in range(8) for s in (0, 3)], "scale": [(0, 0, f) for f in (1.0, 0.9, 1.1)]}


def dihedral(img: np.ndarray, pts: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` (C, H, W) turned ``t % 4`` quarter turns (then mirrored if t >= 4), and ``pts`` (n, 2) with it."""
    y, x = pts[:, 0].copy(), pts[:, 1].copy()
    for _ in range(t % 4):  # counter-clockwise: (y, x) -> (W - 1 - x, y)
        y, x = img.shape[2] - 1 - x, y
        img = np.rot90(img, 1, axes=(1, 2))
    if t >= 4:
        x = img.shape[2] - 1 - x
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img), np.stack([y, x], 1)


def main() -> None:
    args = probe_args("plain,d8,shift,d8shift,scale,central")
    variants = args.variants.split(",")
    recipe, task, splits, sources = probe_task(args)
    for src, load in sources:
        fn = encoder_points(src.encoder, probe_layers(src.encoder.config.depth, recipe.finetune.layers))
        win = src.encoder.config.img_size[0]
        mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (src.stats.mean, src.stats.std))
        shift = mean / std

        def per_image(rows: np.ndarray, view: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
            """Features of table ``rows`` (sorted) under ``view``, grouped per image as compare computes them."""
            return SegmentFeatures(task, load, lambda img, pts, _: view(img, pts), needed=rows).features(rows)

        def transformed(t: int, s: int, scale: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
            def view(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
                if scale != 1.0:  # the raw spectrum x scale, in normalised units
                    img = img * scale + (scale - 1) * shift
                img, pts = dihedral(img, pts, t)
                pad = s * win // 4
                img = np.pad(img, ((0, 0), (pad, 0), (pad, 0)))
                return fn(img.astype(np.float32), pts + pad, None)
            return view

        def central(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
            best, margin = None, None
            for oy in (0, win // 2):
                for ox in (0, win // 2):
                    padded, p = np.pad(img, ((0, 0), (oy, 0), (ox, 0))), pts + np.array([oy, ox])
                    rel = p - tile_starts(p, padded.shape[1:], (win, win))
                    m = np.minimum(rel, win - 1 - rel).min(1)
                    feats = fn(padded.astype(np.float32), p, None)
                    if best is None:
                        best, margin = feats, m
                    else:
                        best[m > margin] = feats[m > margin]
                        margin = np.maximum(margin, m)
            return best

        for split in splits:
            y_train = task.values[split.train]
            plain_test = per_image(split.test, transformed(0, 0, 1.0))
            for v in variants:
                if v == "central":
                    x_train, y, x_test = per_image(split.train, central), y_train, per_image(split.test, central)
                else:
                    x_train = np.concatenate([per_image(split.train, transformed(*vw)) for vw in VIEWS[v]])
                    y, x_test = np.tile(y_train, len(VIEWS[v])), plain_test
                pred = classify("linear", x_train, y, x_test, split.seed)
                sc = scores(task.values[split.test], pred, len(task.class_names), True)
                print(json.dumps({"encoder": src.name, "seed": split.seed, "k": args.k, "variant": v,
                                  "oa": round(sc["oa"], 4), "aa": round(sc["aa"], 4)}), flush=True)


if __name__ == "__main__":
    main()
