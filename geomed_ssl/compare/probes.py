"""The classifiers on frozen features (the same settings for every encoder and baseline) and the scores of a
prediction: ``linear`` (logistic regression on standardised features, classes weighted by
``finetune.class_weights``: by default each training sample alike), ``knn`` (k nearest
neighbours, cosine, distance-weighted votes, k = min(5, training samples)), ``propagate`` (label propagation over a
k-NN graph of the training and unlabelled samples, then ``linear`` on all of them with their propagated classes)
and ``forest`` (the random forest of the ``rf`` baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np

from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix, foreground_dice
from geomed_ssl.models.probe import PROBES, fit_probe, predict_probe

METRIC_KEYS = {"oa": "OA", "aa": "AA", "kappa": "kappa", "miou": "mIoU", "dice": "mean_dice"}


def classify(protocol: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int,
             x_nodes: np.ndarray | None = None, class_weights: Any = None, num_classes: int = 0) -> np.ndarray:
    """Predicted class indices (Nte,) of ``x_test`` by the ``protocol`` classifier trained on (x_train, y_train)
    (``propagate``: and the unlabelled ``x_nodes``); ``linear``, ``knn`` and ``propagate`` are the probes of
    ``geomed_ssl.models.probe`` (``finetune.head=probe`` fits the same, ``class_weights`` as there: one weight per
    class of the task's ``num_classes``, also when a class has no training rows in this split)."""
    classes = np.unique(y_train)
    if classes.size < 2:  # one class to learn from: it is the only answer
        return np.full(x_test.shape[0], classes[0] if classes.size else 0, np.int64)
    if protocol == "forest":
        from sklearn.ensemble import RandomForestClassifier

        from geomed_ssl.compare.baselines import RF_TREES

        model = RandomForestClassifier(n_estimators=RF_TREES, class_weight="balanced", random_state=seed, n_jobs=-1)
        return model.fit(x_train, y_train).predict(x_test).astype(np.int64)
    if protocol in PROBES:
        k = max(int(num_classes), int(y_train.max()) + 1)
        return predict_probe(fit_probe(protocol, x_train, y_train, k, x_nodes, class_weights), x_test, k)
    raise ValueError(f"unknown protocol {protocol!r}")


def scores_from_metrics(metrics: dict[str, Any], dense: bool, background: int | None = None
                        ) -> dict[str, float | None]:
    """oa, aa, kappa (and, for segmentation, miou and dice) from :func:`classification_metrics`' figures (a
    fine-tune run's ``metrics.json`` ``test`` entry); ``dice`` is the mean over the classes other than
    ``background`` (None: every class)."""
    out = {k: metrics.get(v) for k, v in METRIC_KEYS.items()}
    if not dense:
        out["miou"] = out["dice"] = None
    elif background is not None:
        out["dice"] = foreground_dice(metrics, background)
    return out


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, dense: bool, background: int | None = None
           ) -> dict[str, float | None]:
    """The figures of :func:`scores_from_metrics` for a prediction; None where undefined."""
    return scores_from_metrics(classification_metrics(confusion_matrix(y_true, y_pred, num_classes)), dense,
                               background)
