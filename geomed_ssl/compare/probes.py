"""The classifiers on frozen features (the same settings for every encoder and baseline) and the scores of a
prediction: ``linear`` (logistic regression on standardised features, balanced class weights), ``knn`` (k nearest
neighbours, cosine, distance-weighted votes, k = min(5, training samples)) and ``forest`` (the random forest of
the ``rf`` baseline)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix

KNN_K = 5
METRIC_KEYS = {"oa": "OA", "aa": "AA", "kappa": "kappa", "miou": "mIoU", "dice": "mean_dice"}


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0, keepdims=True)
    std = train.std(axis=0, keepdims=True)
    std[std < 1e-6] = 1.0
    return (train - mean) / std, (test - mean) / std


def _row_space(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """With fewer training samples than features, both sets in the coordinates of the training samples' span
    (thin SVD): an L2-penalised linear model's weights lie in that span, so the fit is the same, only faster."""
    if train.shape[0] >= train.shape[1]:
        return train, test
    lam, u = np.linalg.eigh(train @ train.T)  # (n,), (n, n): the small Gram matrix (a thin SVD is far slower)
    keep = lam > lam.max() * 1e-10
    basis = train.T @ (u[:, keep] / np.sqrt(lam[keep]))  # (F, r), orthonormal columns spanning the rows
    return train @ basis, test @ basis


def classify(protocol: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    """Predicted class indices (Nte,) of ``x_test`` by the ``protocol`` classifier trained on (x_train, y_train)."""
    classes = np.unique(y_train)
    if classes.size < 2:  # one class to learn from: it is the only answer
        return np.full(x_test.shape[0], classes[0] if classes.size else 0, np.int64)
    if protocol == "forest":
        from sklearn.ensemble import RandomForestClassifier

        from geomed_ssl.compare.baselines import RF_TREES

        model: Any = RandomForestClassifier(n_estimators=RF_TREES, class_weight="balanced", random_state=seed,
                                            n_jobs=-1)
        return model.fit(x_train, y_train).predict(x_test).astype(np.int64)
    a, b = _standardise(x_train.astype(np.float64), x_test.astype(np.float64))
    if protocol == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        model = KNeighborsClassifier(n_neighbors=min(KNN_K, len(y_train)), metric="cosine", weights="distance")
        return model.fit(a, y_train).predict(b).astype(np.int64)
    if protocol == "linear":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced")
        a, b = _row_space(a, b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(a, y_train).predict(b).astype(np.int64)
    raise ValueError(f"unknown protocol {protocol!r}")


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, dense: bool) -> dict[str, float | None]:
    """oa, aa, kappa (and, for segmentation, miou and dice) of a prediction; None where undefined."""
    metrics = classification_metrics(confusion_matrix(y_true, y_pred, num_classes))
    out = {k: metrics[v] for k, v in METRIC_KEYS.items()}
    if not dense:
        out["miou"] = out["dice"] = None
    return out


def scores_from_metrics(metrics: dict[str, Any], dense: bool) -> dict[str, float | None]:
    """The same figures from a fine-tune run's ``metrics.json`` ``test`` entry."""
    out = {k: metrics.get(v) for k, v in METRIC_KEYS.items()}
    if not dense:
        out["miou"] = out["dice"] = None
    return out
