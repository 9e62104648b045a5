"""Which windows a frozen per-pixel probe should read its features from (selection seeds only), as `compare` draws
the samples, on a RUN_DIR and its architecture at random initialisation (``none``).

    python benchmarks/research/probe_windows.py RUN_DIR --images IMG_DIR --labels LABELS [--seeds 10,11] [--k 5] \
        [--variants tiles,blend0.25,blend0.5,blend0.75,central32,central64,tiles>blend0.25,blend0.75>blend0.25,lp,lpall]

Variants (training and test features alike unless ``A>B``: fitted on A, tested on B):
- ``tiles``: one window per pixel, the non-overlapping tiling of the encoder's window (the last one moved back to
  the edge): what the probes read before 2026-12-02;
- ``blendO``: the library's features (``encoder_points``): `predict`'s windows at overlap O, Gaussian-weighted
  (O = 0.25 is `predict`'s default and what the probes read now);
- ``centralT``: windows of T px every T/2 px over the zero-padded image, each pixel from the one whose central half
  holds it (the research scripts' ``scene_features``);
- ``lp`` (``lp:VARIANT``): label propagation on the ``blend0.25`` (VARIANT's) features: a symmetric
  10-nearest-neighbour cosine graph over all labelled pixels (test pixels unlabelled: transductive), 50 iterations of
  F = 0.99 S F + 0.01 Y. The graph knows which pixels are annotated (the reference mask): an optimistic number;
- ``lpall``: the same over every pixel of the image (annotated or not; single-image tasks), what a user would get
  (``compare --protocol propagate`` now ships it, with a k-NN step for ``predict``: ``propagate_variants.py``).
One JSON line per (encoder, seed, variant, probe) with the OA.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch

from geomed_ssl.compare.features import SegmentFeatures
from geomed_ssl.compare.probes import classify, scores
from geomed_ssl.models.probe import crop, encoder_points, probe_layers, sample_grid
from geomed_ssl.models.propagate import propagate_labels
from probe_common import probe_args, probe_task, tile_starts  # beside this script

PointFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def single_window_points(encoder, layers: list[int], starts_of: Callable[[np.ndarray, tuple[int, ...]], np.ndarray],
                         window: tuple[int, int], pad: int = 0) -> PointFn:
    """Features of each point from one window: ``starts_of(points, shape)`` (n, 2) origins in the image padded by
    ``pad`` px of zeros on every side."""

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        img = np.pad(image, ((0, 0), (pad, pad), (pad, pad))) if pad else image
        p = points + pad
        starts = starts_of(p, img.shape[1:])
        uniq, which = np.unique(starts, axis=0, return_inverse=True)
        out = np.zeros((len(p), len(layers) * encoder.embed_dim), np.float32)
        with torch.no_grad():
            for u, s in enumerate(uniq):
                feats, grid = encoder.forward_features(torch.from_numpy(crop(img, s, window))[None], layers)
                maps = torch.cat([f.transpose(1, 2).reshape(1, -1, *grid) for f in feats], 1)[0]
                idx = np.flatnonzero(which.reshape(-1) == u)
                out[idx] = sample_grid(maps, p[idx] - s, window).numpy()
        return out

    return fn


def tiles(encoder, layers: list[int]) -> PointFn:
    w = tuple(encoder.config.img_size)
    return single_window_points(encoder, layers, lambda p, shape: tile_starts(p, shape, w), w)


def central(encoder, layers: list[int], t: int) -> PointFn:
    s, q = t // 2, t // 4  # windows start at -q + i * s (in the unpadded image); central half [i * s, i * s + s)
    return single_window_points(encoder, layers, lambda p, shape: (p - t) // s * s - q + t, (t, t), pad=t)


def main() -> None:
    args = probe_args("tiles,blend0.25,blend0.5,blend0.75,central32,central64,tiles>blend0.25,blend0.75>blend0.25,lp,"
                      "lp:tiles,lpall")
    recipe, task, splits, sources = probe_task(args)
    k = len(task.class_names)
    rows = np.arange(task.values.size)
    for src, load in sources:
        layers = probe_layers(src.encoder.config.depth, recipe.finetune.layers)
        cache: dict[str, np.ndarray] = {}

        def feats(name: str) -> np.ndarray:
            if name not in cache:
                if name == "tiles":
                    fn = tiles(src.encoder, layers)
                elif name.startswith("blend"):
                    fn = encoder_points(src.encoder, layers, overlap=float(name[5:]))
                else:
                    fn = central(src.encoder, layers, int(name[7:]))
                cache[name] = SegmentFeatures(task, load, fn).features(rows)
            return cache[name]

        def whole_image() -> np.ndarray:
            """``blend0.25`` features of every pixel of the task's one image, in flat order."""
            if "all" not in cache:
                assert len(task.shapes) == 1, "lpall: one image only"
                shape = tuple(task.shapes[0])
                pts = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), 1)
                cache["all"] = encoder_points(src.encoder, layers)(load(0), pts, None)
            return cache["all"]

        for split in splits:
            y_train, y_test = task.values[split.train], task.values[split.test]
            for v in args.variants.split(","):
                if v.startswith("lp"):
                    if v == "lpall":  # graph nodes: every pixel (flat index)
                        x, train_nodes, test_nodes = whole_image(), task.flats[split.train], task.flats[split.test]
                    else:  # graph nodes: the task's rows
                        x, train_nodes, test_nodes = feats(v[3:] or "blend0.25"), split.train, split.test
                    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
                    values = np.unique(task.values)
                    f = propagate_labels(z, train_nodes, np.searchsorted(values, y_train), len(values))
                    results = {"propagation": values[f[test_nodes].argmax(1)]}
                else:
                    fit, test = (v.split(">") + [v])[:2]
                    results = {p: classify(p, feats(fit)[split.train], y_train, feats(test)[split.test], split.seed)
                               for p in ("linear", "knn")}
                for probe, pred in results.items():
                    sc = scores(y_test, pred, k, True)
                    print(json.dumps({"encoder": src.name, "seed": split.seed, "k": args.k, "variant": v,
                                      "probe": probe, "oa": round(sc["oa"], 4)}), flush=True)


if __name__ == "__main__":
    main()
