"""Lloyd's k-means in torch, for DeepCluster-v2's prototypes: Euclidean or spherical (cosine), optionally over
data sharded across ranks.

Semantics (those of scikit-learn's ``KMeans(init=centroids, n_init=1, algorithm="lloyd")`` and of DeepCluster-v2's
``cluster_memory``): ``iterations`` rounds of assign (E) then update (M), then a final assignment, so the labels
returned belong to the centroids returned. An empty cluster keeps its previous centroid (DeepCluster-v2;
scikit-learn would move it to a far point instead). Spherical k-means (DeepCluster-v2) assigns by the largest dot
product and L2-normalises the centroids after each update; pass L2-normalised data.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from geomed_ssl.methods.distributed import all_reduce_sum_, broadcast_, rank

ASSIGN_CHUNK = 8192  # rows scored at once: bounds the (rows, K) score matrix of a large memory bank


class KMeansResult(NamedTuple):
    centroids: Tensor  # (K, D)
    labels: Tensor  # (N,) long, the nearest centroid of each local sample


@torch.no_grad()
def assign(x: Tensor, centroids: Tensor, spherical: bool = True, chunk: int = ASSIGN_CHUNK) -> Tensor:
    """E step: ``x`` (N, D), ``centroids`` (K, D) -> labels (N,): largest dot product (spherical) or smallest
    Euclidean distance (``argmax x.c - |c|^2 / 2``). Scores are computed ``chunk`` rows at a time."""
    half_sq = None if spherical else 0.5 * (centroids * centroids).sum(dim=1)  # (K,)
    labels = []
    for part in x.split(chunk):
        scores = part @ centroids.t()  # (chunk, K)
        if half_sq is not None:
            scores = scores - half_sq
        labels.append(scores.argmax(dim=1))
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def update(x: Tensor, labels: Tensor, centroids: Tensor, spherical: bool = True, distributed: bool = False) -> Tensor:
    """M step: the mean of each cluster's samples (summed over ranks when ``distributed``); empty clusters keep
    their centroid; spherical centroids are L2-normalised. Returns new centroids (K, D)."""
    k = centroids.shape[0]
    sums = torch.zeros_like(centroids).index_add_(0, labels, x.to(centroids.dtype))  # (K, D)
    counts = torch.bincount(labels, minlength=k).to(centroids.dtype)  # (K,)
    if distributed:
        all_reduce_sum_(sums)
        all_reduce_sum_(counts)
    filled = counts > 0
    new = centroids.clone()
    new[filled] = sums[filled] / counts[filled, None]
    if spherical:
        new = torch.nn.functional.normalize(new, dim=1)
    return new


@torch.no_grad()
def kmeans(x: Tensor, centroids: Tensor, iterations: int = 10, spherical: bool = True,
           distributed: bool = False) -> KMeansResult:
    """``iterations`` Lloyd rounds from ``centroids`` (K, D) over ``x`` (N, D), then the labels of ``x`` for the
    final centroids. ``distributed=True`` when each rank holds a different shard of the data (the centroids must
    be the same on every rank: :func:`sample_centroids`)."""
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"kmeans wants x (N, D) and centroids (K, D), got {tuple(x.shape)}, {tuple(centroids.shape)}")
    c = centroids.to(x.dtype)
    for _ in range(iterations):
        c = update(x, assign(x, c, spherical), c, spherical, distributed)
    return KMeansResult(centroids=c, labels=assign(x, c, spherical))


@torch.no_grad()
def sample_centroids(x: Tensor, k: int, generator: torch.Generator | None = None, distributed: bool = False) -> Tensor:
    """``k`` distinct rows of ``x`` (N, D) drawn with ``generator`` (DeepCluster-v2's initialisation): (k, D). With
    ``distributed``, rank 0 draws and broadcasts, so every rank starts from the same centroids (every rank must
    hold at least ``k`` rows). ``generator`` is a CPU generator."""
    if k > x.shape[0]:
        raise ValueError(f"cannot draw {k} centroids from {x.shape[0]} samples: lower the number of prototypes")
    out = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    if not distributed or rank() == 0:
        idx = torch.randperm(x.shape[0], generator=generator, device="cpu")[:k].to(x.device)
        out.copy_(x[idx])
    if distributed:
        broadcast_(out, src=0)
    return out
