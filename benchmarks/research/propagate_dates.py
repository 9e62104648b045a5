"""``propagate`` on a stack of dates of one ground (the Sentinel-2 tile's five): how often the k-NN graph joins two
dates, and the protocol with the graph built on features centred per date (the linear head still fitted on the
plain features, as ``predict`` meets them). Selection seeds by default; one JSON line per encoder x seed x variant.

    python benchmarks/research/propagate_dates.py RUN_DIR --images DATES_DIR --labels LABELS --k 10 [--seeds 10,11]
"""

from __future__ import annotations

import json

import numpy as np
from probe_common import probe_args, probe_task

from geomed_ssl.compare.probes import scores
from geomed_ssl.models.probe import encoder_points, fit_probe, predict_probe, probe_layers, standardiser
from geomed_ssl.models.propagate import knn_graph, node_classes, propagated


def centred_propagated(x_train: np.ndarray, y_train: np.ndarray, x_nodes: np.ndarray, groups: np.ndarray,
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``propagated`` with each group's (date's) mean taken off the standardised features the graph is built on."""
    x = np.concatenate([x_train, x_nodes]).astype(np.float32)
    mean, std = standardiser(x.astype(np.float64))
    z = ((x - mean) / std).astype(np.float32)
    for g in np.unique(groups):
        z[groups == g] -= z[groups == g].mean(0)
    keep, labels = node_classes(z, y_train, num_classes)
    return x[keep], labels[keep]


def main() -> None:
    args = probe_args("plain,centred")
    recipe, task, splits, sources = probe_task(args)
    assert len({tuple(s) for s in task.shapes}) == 1, "dates of one ground: one grid"
    values = np.unique(task.values)
    k, shape = len(values), tuple(task.shapes[0])
    n = int(np.prod(shape))
    every = np.stack(np.unravel_index(np.arange(n), shape), 1)
    for src, load in sources:
        points = encoder_points(src.encoder, probe_layers(src.encoder.config.depth, recipe.finetune.layers))
        x = np.concatenate([points(load(i), every, None) for i in range(len(task.shapes))]).astype(np.float32)
        date = np.repeat(np.arange(len(task.shapes)), n)
        nodes = np.sort(np.random.default_rng(recipe.labels.seed).choice(x.shape[0], recipe.finetune.probe_nodes,
                                                                       replace=False))
        mean, std = standardiser(x[nodes].astype(np.float64))
        graph = knn_graph(((x[nodes] - mean) / std).astype(np.float32)).tocoo()
        same = float((date[nodes][graph.row] == date[nodes][graph.col]).mean())
        print(json.dumps({"encoder": src.name, "edges_within_one_date": round(same, 4)}), flush=True)
        for split in splits:
            train = task.files[split.train] * n + task.flats[split.train]
            test = task.files[split.test] * n + task.flats[split.test]
            y_train = np.searchsorted(values, task.values[split.train])
            for v in args.variants.split(","):
                x_all, labels = (propagated(x[train], y_train, x[nodes], k) if v == "plain" else
                                 centred_propagated(x[train], y_train, x[nodes],
                                                    np.concatenate([date[train], date[nodes]]), k))
                pred = values[predict_probe(fit_probe("linear", x_all, labels, k), x[test], k)]
                m = scores(task.values[split.test], pred, len(task.class_names), True)
                print(json.dumps({"encoder": src.name, "seed": split.seed, "variant": v,
                                  **{key: round(m[key], 4) for key in ("oa", "aa", "miou")}}), flush=True)


if __name__ == "__main__":
    main()
