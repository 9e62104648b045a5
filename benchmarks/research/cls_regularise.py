"""How the linear probe's L2 strength treats pretrained and random features (selection seeds only): ``compare``'s
image features and its logistic regression at C = 0.001 ... 10 (``compare`` fixes C = 1), and C chosen by 5-fold
cross-validation on the labelled images alone (no test label seen).

    PYTHONPATH=$PWD python benchmarks/research/cls_regularise.py RUN_DIR --data ../shared/data/eurosat_ms_200
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from geomed_ssl.compare.features import encoder_image_fn
from geomed_ssl.models.probe import _row_space, probe_layers, standardiser
from probe_common import class_probe_args, probe_task  # beside this script

CS = (0.001, 0.01, 0.1, 1.0, 10.0)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float) -> np.ndarray:
    """``compare``'s linear probe (standardised features, their row space) at L2 strength 1 / c."""
    from sklearn.linear_model import LogisticRegression

    mean, std = standardiser(x_train.astype(np.float64))
    z, zt = (x_train - mean) / std, (x_test - mean) / std
    basis = _row_space(z)
    return LogisticRegression(C=c, max_iter=2000).fit(z @ basis, y_train).predict(zt @ basis)


def cv_choice(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The C of the best 5-fold cross-validated accuracy on (x, y) (ties: the smaller C)."""
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y))
    accs = [np.mean([(fit_predict(x[a], y[a], x[b], c) == y[b]).mean() for a, b in folds]) for c in CS]
    return CS[int(np.argmax(accs))]


def main() -> None:
    a = class_probe_args()
    torch.set_num_threads(1)
    recipe, task, splits, sources = probe_task(a)
    y = task.values
    for (src, load), name in zip(sources, ["pretrained", "random"]):
        enc = src.encoder.eval()
        fn = encoder_image_fn(enc, probe_layers(enc.config.depth, recipe.finetune.layers), load)
        x = np.stack([fn(i) for i in range(len(task.records))]).astype(np.float32)
        row = {"tag": a.tag, "run": a.run_dir, "encoder": name, "seeds": [s.seed for s in splits]}
        for c in CS:
            row[f"C={c}"] = round(float(np.mean([(fit_predict(x[s.train], y[s.train], x[s.test], c) == y[s.test])
                                                  .mean() for s in splits])), 3)
        chosen = [cv_choice(x[s.train], y[s.train], s.seed) for s in splits]
        row["cv_C"] = chosen
        row["cv"] = round(float(np.mean([(fit_predict(x[s.train], y[s.train], x[s.test], c) == y[s.test]).mean()
                                         for s, c in zip(splits, chosen)])), 3)
        print(json.dumps(row), flush=True)
        with open(Path(__file__).parent / "cls_regularise.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
