"""Weighted k-NN classification on frozen features (DINO's ``eval_knn``): a cheap monitor of representation quality.

Features are L2-normalised; each of the ``k`` nearest training samples (cosine similarity ``s``) votes for its label
with weight ``exp(s / T)``; the class with the largest summed vote wins.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_feats: torch.Tensor | np.ndarray,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels (M,) long for ``test_feats`` (M, D) from ``train_feats`` (N, D) and ``train_labels`` (N,).

    ``k`` is capped at N; ``num_classes`` defaults to ``max(label) + 1``. Test samples are processed in chunks.
    """
    train = F.normalize(_as_tensor(train_feats).float(), dim=1)  # (N, D)
    test = F.normalize(_as_tensor(test_feats).float(), dim=1)  # (M, D)
    labels = _as_tensor(train_labels).long().to(train.device)  # (N,)
    if train.shape[0] != labels.shape[0]:
        raise ValueError(f"{train.shape[0]} training features but {labels.shape[0]} labels.")
    n_cls = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    k = max(1, min(int(k), train.shape[0]))
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(sim.shape[0], n_cls, device=sim.device)
        votes.scatter_add_(1, labels[top_idx], (top_sim / T).exp())  # (m, C)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_feats: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_classify`."""
    truth = _as_tensor(test_labels).long()
    if num_classes is None:
        num_classes = int(max(int(_as_tensor(train_labels).max()), int(truth.max()))) + 1
    pred = knn_classify(train_feats, train_labels, test_feats, k=k, T=T, num_classes=num_classes)
    return float((pred.cpu() == truth.cpu()).float().mean()) if len(truth) else 0.0


def kfold_knn_accuracy(
    feats: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    folds: int = 5,
    seed: int = 0,
    k: int = 20,
    T: float = 0.07,
) -> float:
    """Mean k-NN accuracy over ``folds`` folds of a seeded stratified split (each class dealt round-robin)."""
    x, y = _as_tensor(feats), _as_tensor(labels).long()
    n = len(y)
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in [2, {n}] for {n} samples, got {folds}.")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    offset = 0
    y_np = y.cpu().numpy()
    for cls in np.unique(y_np):
        idx = rng.permutation(np.flatnonzero(y_np == cls))
        fold_of[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    num_classes = int(y.max()) + 1
    accs = []
    for f in range(folds):
        test = torch.from_numpy(fold_of == f)
        if test.all() or not test.any():
            continue
        accs.append(knn_accuracy(x[~test], y[~test], x[test], y[test], k=k, T=T, num_classes=num_classes))
    return float(np.mean(accs))
