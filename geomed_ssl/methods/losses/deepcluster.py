"""DeepCluster-v2: spherical k-means over a memory bank of recent embeddings gives prototypes and a pseudo-label per
sample; the network is trained to predict those labels from every crop (cross-entropy at a temperature).

Shapes: ``V`` assignment views (DeepCluster-v2: the 2 global crops), ``B`` samples per rank, ``D`` embedding dim,
``H`` k-means heads of ``K_h`` prototypes each, ``Ds`` dataset size. Samples are identified by their dataset index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.methods.distributed import concat_all_gather, is_distributed
from geomed_ssl.methods.kmeans import kmeans, sample_centroids
from geomed_ssl.methods.losses.precision import float32_loss
from geomed_ssl.methods.queue import FeatureQueue

IGNORE = -100  # label of a sample no clustering has seen yet (cross_entropy's ignore_index)


class DeepClusterMemory(nn.Module):
    """The last ``size`` samples' L2-normalised embeddings (one per assignment view) and dataset indices, the
    same on every rank (rows of all ranks are enqueued), and the current pseudo-label of each dataset sample.

    Buffers, all saved with the model: ``embeddings`` (a :class:`FeatureQueue` of (V, D) rows), ``indices`` (one
    of dataset indices), ``assignments`` (H, Ds) long, ``IGNORE`` where unknown.
    """

    def __init__(self, size: int, dim: int, n_prototypes: Sequence[int], dataset_size: int, n_views: int = 2,
                 kmeans_iterations: int = 10) -> None:
        super().__init__()
        if not n_prototypes or any(int(k) <= 0 for k in n_prototypes):
            raise ValueError(f"n_prototypes must be positive, got {list(n_prototypes)}")
        self.n_prototypes = [int(k) for k in n_prototypes]
        self.n_views = n_views
        self.kmeans_iterations = kmeans_iterations
        self.embeddings = FeatureQueue(size, (n_views, dim), init="empty")
        self.indices = FeatureQueue(size, (), dtype=torch.long, init="empty")
        self.register_buffer("assignments", torch.full((len(self.n_prototypes), dataset_size), IGNORE,
                                                       dtype=torch.long))

    def __len__(self) -> int:
        return len(self.indices)

    @torch.no_grad()
    def add(self, indices: Tensor, embeddings: Tensor) -> None:
        """Enqueue this step's samples of every rank: ``indices`` (B,) dataset indices, ``embeddings`` (V, B, D)."""
        if embeddings.shape[0] != self.n_views or embeddings.shape[1] != indices.shape[0]:
            raise ValueError(f"want embeddings ({self.n_views}, {indices.shape[0]}, D), got {tuple(embeddings.shape)}")
        rows = F.normalize(embeddings.detach().float(), dim=-1).transpose(0, 1)  # (B, V, D)
        self.embeddings.enqueue(concat_all_gather(rows), gather=False)
        self.indices.enqueue(concat_all_gather(indices.to(self.indices.rows.device)), gather=False)

    @torch.no_grad()
    def cluster(self, generator: torch.Generator | None = None) -> list[Tensor]:
        """Run k-means for every head (head ``h`` on view ``h % V``, from centroids drawn from the memory), refresh
        ``assignments`` for the samples in memory (the newest row of a sample that appears twice wins, the others
        become ``IGNORE``) and return the centroids, (K_h, D) per head, to copy into the prototypes."""
        n = len(self)
        if n < max(self.n_prototypes):
            raise ValueError(f"the memory holds {n} samples, fewer than the {max(self.n_prototypes)} prototypes")
        emb = self.embeddings.oldest_first()  # (n, V, D)
        idx = self.indices.oldest_first()  # (n,)
        newest = torch.full((self.assignments.shape[1],), -1, dtype=torch.long, device=idx.device)
        newest.scatter_reduce_(0, idx, torch.arange(n, device=idx.device), reduce="amax")
        seen = newest >= 0  # (Ds,)
        self.assignments.fill_(IGNORE)
        centroids = []
        for h, k in enumerate(self.n_prototypes):
            x = emb[:, h % self.n_views]  # (n, D)
            init = sample_centroids(x, k, generator, distributed=is_distributed())
            result = kmeans(x, init, self.kmeans_iterations, spherical=True)  # every rank holds the same memory
            self.assignments[h, seen] = result.labels[newest[seen]]
            centroids.append(result.centroids)
        return centroids

    def targets(self, indices: Tensor) -> Tensor:
        """Pseudo-labels of the samples ``indices`` (B,): (H, B) long, ``IGNORE`` for unclustered samples."""
        return self.assignments[:, indices.to(self.assignments.device)]


@float32_loss
def deepcluster_loss(scores: Sequence[Tensor], targets: Tensor, temperature: float = 0.1) -> Tensor:
    """DeepCluster-v2's loss: ``scores[h]`` (V, B, K_h) prototype scores of every crop for head ``h``, ``targets``
    (H, B) pseudo-labels; the mean over heads of the cross-entropy of ``softmax(scores / temperature)`` against
    each sample's label, over all crops, skipping ``IGNORE`` labels (a head with no label contributes 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(scores) != targets.shape[0]:
        raise ValueError(f"{len(scores)} heads of scores but {targets.shape[0]} rows of targets")
    total = scores[0].new_zeros(())
    for s, t in zip(scores, targets):
        v, b, k = s.shape
        labels = t.to(s.device).repeat(v)  # (V*B,), crop-major as s.reshape
        ce = F.cross_entropy(s.reshape(v * b, k) / temperature, labels, ignore_index=IGNORE, reduction="sum")
        total = total + ce / (labels != IGNORE).sum().clamp_min(1)  # mean over labelled rows; 0 (in graph) if none
    return total / len(scores)
