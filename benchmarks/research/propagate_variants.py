"""Variants of ``compare``'s ``propagate`` protocol on a single-scene segmentation task (OA of the test pixels):

- ``all``: the protocol's first form when the scene holds at most ``finetune.probe_nodes`` pixels: every pixel a
  node, then the linear probe fitted on every node with its propagated class (under the labels' class shares)
  classifies the test pixels;
- ``knn``: every pixel a node, the test pixels classified by a k-NN memory of all the propagated nodes (the
  protocol's first form: as accurate, but its head is the whole memory and ``predict`` compares every pixel with it);
- ``nodesN``: N random pixels (plus the training pixels) as the nodes, as on a scene larger than the cap;
- ``confM``: the k-NN memory of only each class's M most confident propagated pixels (and the training pixels);
- ``em``: the protocol as shipped: ``all`` with the classes' shares re-estimated on the nodes (Saerens et al.
  2002's EM for a prior shift: k labels per class say every class is as common, the scene does not), each node
  then takes its best class under the estimated shares (``nodesN`` estimate them too);
- ``rf``, ``random_conv``: the protocol on the encoder-free baselines' features (PCA + 7x7 means; random
  convolutions) beside the classifier ``compare`` runs on them: how much of the gain is the graph's alone.

    python benchmarks/research/propagate_variants.py RUN_DIR --images IMG_DIR --labels LABELS [--seeds 0,1,2]
        [--variants all,em,knn,nodes10000,nodes5000,nodes2000,conf200,conf500,conf1000,conf2000,rf,random_conv]

Encoder variants run for RUN_DIR and ``none``; one JSON line per encoder/baseline x seed x variant.
"""

from __future__ import annotations

import json

import numpy as np
from probe_common import probe_args, probe_task

from geomed_ssl.compare.baselines import baseline_features
from geomed_ssl.compare.probes import classify, scores
from geomed_ssl.compare.run import _images
from geomed_ssl.data.stats import compute_stats
from geomed_ssl.models.probe import encoder_points, fit_probe, predict_probe, probe_layers
from geomed_ssl.models.propagate import propagate_labels, propagated

BASELINES = ("rf", "random_conv")


def confident_rows(x: np.ndarray, labels: np.ndarray, n_train: int, per_class: int, num_classes: int
                   ) -> np.ndarray:
    """The training rows and each class's ``per_class`` most confident propagated nodes (propagation rerun on the
    standardised rows to get its scores)."""
    z = ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)
    f = propagate_labels(z, np.arange(n_train), labels[:n_train], num_classes)
    conf = f / np.maximum(f.sum(1, keepdims=True), 1e-12)
    keep = [np.arange(n_train)]
    for c in range(num_classes):
        rows = n_train + np.flatnonzero(labels[n_train:] == c)
        keep.append(rows[np.argsort(-conf[rows, c])[:per_class]])
    return np.concatenate(keep)


def main() -> None:
    args = probe_args("all,em,knn,nodes10000,nodes5000,nodes2000,conf200,conf500,conf1000,conf2000,rf,random_conv")
    recipe, task, splits, sources = probe_task(args)
    assert len(task.shapes) == 1, "one scene"
    variants = args.variants.split(",")
    values = np.unique(task.values)
    k = len(values)
    shape = tuple(task.shapes[0])
    every = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), 1)

    def show(name: str, seed: int, variant: str, pred: np.ndarray, y_test: np.ndarray) -> None:
        m = scores(y_test, pred, len(task.class_names), True)
        print(json.dumps({"encoder": name, "seed": seed, "k": args.k, "variant": variant,
                          **{key: round(m[key], 4) for key in ("oa", "aa", "miou")}}), flush=True)

    for src, load in (sources if any(v not in BASELINES for v in variants) else []):
        x = encoder_points(src.encoder, probe_layers(src.encoder.config.depth, recipe.finetune.layers))(
            load(0), every, None)  # (pixels, F) in flat order
        for split in splits:
            rng = np.random.default_rng(split.seed)
            train, test = task.flats[split.train], task.flats[split.test]
            y_train = np.searchsorted(values, task.values[split.train])
            y_test = task.values[split.test]
            for v in variants:
                if v in BASELINES:
                    continue
                nodes = (np.arange(x.shape[0]) if not v.startswith("nodes")
                         else rng.choice(x.shape[0], int(v[5:]), replace=False))
                x_all, labels = propagated(x[train], y_train, x[nodes], k,
                                           "labels" if v in ("all", "knn") or v.startswith("conf") else "estimated")
                if v.startswith("conf"):
                    keep = confident_rows(x_all, labels, train.size, int(v[4:]), k)
                    state = fit_probe("knn", x_all[keep], labels[keep], k)
                else:
                    state = fit_probe("knn" if v == "knn" else "linear", x_all, labels, k)
                show(src.name, split.seed, v, values[predict_probe(state, x[test], k)], y_test)
    if any(v in BASELINES for v in variants):
        stats = compute_stats(task.catalog, recipe.data, seed=recipe.labels.seed)
        load = _images(task, task.records, stats, recipe, (1,) * task.spatial_dims)
        for name in (v for v in variants if v in BASELINES):
            feats = baseline_features(name, task, load, len(stats.band_names))
            nodes = feats.nodes(recipe.finetune.probe_nodes, recipe.labels.seed)
            for split in splits:
                x_train, x_test = feats.features(split.train), feats.features(split.test)
                for protocol in ("forest" if name == "rf" else "linear", "propagate"):
                    pred = classify(protocol, x_train, task.values[split.train], x_test, split.seed, nodes)
                    show(name, split.seed, f"{protocol}", pred, task.values[split.test])


if __name__ == "__main__":
    main()
