"""Our torch k-means against scikit-learn's ``KMeans`` started from the same centroids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from geomed_ssl.methods.kmeans import assign, kmeans, sample_centroids, update


def _blobs(n: int, k: int, d: int, seed: int) -> torch.Tensor:
    """Overlapping Gaussian blobs (float64), so Lloyd's iterations keep moving points between clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 2
    return centres[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize(("k", "d"), [(3, 2), (5, 8), (12, 16)])
def test_euclidean_kmeans_matches_sklearn_from_same_centroids(iterations: int, k: int, d: int) -> None:
    x = _blobs(400, k, d, seed=k * d)
    init = sample_centroids(x, k, torch.Generator().manual_seed(iterations))
    ours = kmeans(x, init, iterations, spherical=False)
    ref = KMeans(n_clusters=k, init=init.numpy(), n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd").fit(
        x.numpy())
    assert np.bincount(ref.labels_, minlength=k).min() > 0  # no empty cluster (the two would then differ)
    np.testing.assert_array_equal(ours.labels.numpy(), ref.labels_)
    np.testing.assert_allclose(ours.centroids.numpy(), ref.cluster_centers_, rtol=1e-9, atol=1e-9)


def test_spherical_assignment_is_sklearns_nearest_unit_centroid() -> None:
    x = F.normalize(_blobs(300, 6, 10, seed=0), dim=1)
    c = F.normalize(torch.randn(6, 10, dtype=torch.float64), dim=1)
    np.testing.assert_array_equal(assign(x, c, spherical=True).numpy(), pairwise_distances_argmin(x.numpy(), c.numpy()))


def test_spherical_update_is_the_normalised_cluster_mean() -> None:
    x = F.normalize(_blobs(200, 4, 6, seed=1), dim=1)
    c = sample_centroids(x, 4, torch.Generator().manual_seed(0))
    labels = assign(x, c)
    new = update(x, labels, c, spherical=True)
    for j in range(4):
        torch.testing.assert_close(new[j], F.normalize(x[labels == j].mean(0), dim=0))


@pytest.mark.parametrize("iterations", [1, 5])
def test_spherical_kmeans_iterates_sklearn_assignment_and_normalised_means(iterations: int) -> None:
    x = F.normalize(_blobs(300, 5, 8, seed=2), dim=1)
    c = sample_centroids(x, 5, torch.Generator().manual_seed(1)).numpy()
    xn = x.numpy()
    for _ in range(iterations):  # DeepCluster-v2's loop with scikit-learn's assignment step
        labels = pairwise_distances_argmin(xn, c)
        c = np.stack([xn[labels == j].mean(0) for j in range(5)])
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    ours = kmeans(x, sample_centroids(x, 5, torch.Generator().manual_seed(1)), iterations, spherical=True)
    np.testing.assert_allclose(ours.centroids.numpy(), c, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ours.labels.numpy(), pairwise_distances_argmin(xn, c))


def test_empty_cluster_keeps_its_centroid() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    c = torch.tensor([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]])  # the third centroid attracts nobody
    out = kmeans(x, c, iterations=2, spherical=False)
    torch.testing.assert_close(out.centroids[2], c[2])
    assert out.labels.tolist() == [0, 0, 1]


def test_assignment_in_chunks_equals_one_pass() -> None:
    x, c = torch.randn(1000, 8), torch.randn(7, 8)
    assert torch.equal(assign(x, c, spherical=False, chunk=64), assign(x, c, spherical=False, chunk=10_000))


def test_sample_centroids_draws_distinct_rows_reproducibly() -> None:
    x = torch.arange(40.0).reshape(20, 2)
    a = sample_centroids(x, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, sample_centroids(x, 5, torch.Generator().manual_seed(3)))
    assert len({tuple(r) for r in a.tolist()}) == 5 and all(r in x.tolist() for r in a.tolist())


def test_more_centroids_than_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot draw 5 centroids from 3 samples"):
        sample_centroids(torch.randn(3, 2), 5)
