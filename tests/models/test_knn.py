"""Weighted k-NN monitor: DINO's eval_knn voting rule, accuracy and k-fold accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.models.knn import kfold_knn_accuracy, knn_accuracy, knn_classify


def dino_knn_reference(train, train_labels, test, k, T, num_classes):
    """DINO's knn_classifier inner loop (one chunk), kept as the reference."""
    similarity = test @ train.t()
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    retrieved = torch.gather(train_labels.view(1, -1).expand(test.shape[0], -1), 1, indices)
    one_hot = torch.zeros(test.shape[0] * k, num_classes).scatter_(1, retrieved.view(-1, 1), 1)
    probs = (one_hot.view(test.shape[0], -1, num_classes) * distances.div(T).exp().view(test.shape[0], -1, 1)).sum(1)
    return probs.argmax(1)


def test_matches_dino_reference_on_random_features() -> None:
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(200, 16, generator=g), dim=1)
    test = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    labels = torch.randint(0, 5, (200,), generator=g)
    want = dino_knn_reference(train, labels, test, 20, 0.07, 5)
    assert torch.equal(knn_classify(train * 3.0, labels, test, k=20, T=0.07, num_classes=5, chunk=7), want)


def test_separable_clusters_are_classified_perfectly_and_k_is_capped() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 8)) * 5
    labels = np.repeat(np.arange(3), 10)
    feats = centers[labels] + 0.1 * rng.standard_normal((30, 8))
    assert knn_accuracy(feats, labels, feats, labels, k=100) == 1.0
    assert kfold_knn_accuracy(feats, labels, folds=5, seed=0) == 1.0


def test_random_labels_give_chance_level_kfold_accuracy() -> None:
    rng = np.random.default_rng(1)
    acc = kfold_knn_accuracy(rng.standard_normal((200, 8)), rng.integers(0, 4, 200), folds=5, seed=0)
    assert 0.1 < acc < 0.45
    with pytest.raises(ValueError, match="folds"):
        kfold_knn_accuracy(np.zeros((3, 2)), np.zeros(3), folds=5)
