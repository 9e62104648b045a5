"""Contrastive (InfoNCE) losses: SimCLR's NT-Xent, MoCo v2's InfoNCE against a queue, MoCo v3's symmetric loss.

Shapes: ``B`` samples per rank, ``W`` ranks, ``D`` embedding dim, ``K`` queued negatives. Embeddings are
L2-normalised here (float32, autocast off). Under DDP, negatives and keys come from the global batch (gathered with
gradients where the loss differentiates through them), and the per-rank loss is a mean over the local anchors, so
DDP's gradient average is the gradient of the global-batch loss (see :mod:`geomed_ssl.methods.distributed`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.methods.distributed import concat_all_gather, gather, local_offset
from geomed_ssl.methods.losses.precision import float32_loss
from geomed_ssl.methods.queue import FeatureQueue

NORM_EPS = 1e-12  # F.normalize's floor on the norm; fine in float32, where the inputs are cast first


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


@float32_loss
def nt_xent_loss(z0: Tensor, z1: Tensor, temperature: float = 0.1, gather_distributed: bool = True) -> Tensor:
    """SimCLR's NT-Xent: each of the ``2B`` views is classified against its positive (the other view of its image)
    among the ``2 W B - 1`` other views of the global batch.

    ``z0``, ``z1`` (B, D) projections of the two views; returns the mean cross-entropy over the local ``2B``
    anchors. The default temperature is SimCLR's (0.1; lightly's ``NTXentLoss`` defaults to 0.5).
    """
    _check_temperature(temperature)
    if z0.shape != z1.shape or z0.ndim != 2:
        raise ValueError(f"nt_xent_loss wants two (B, D) tensors of one shape, got {tuple(z0.shape)}, "
                         f"{tuple(z1.shape)}")
    b = z0.shape[0]
    z0, z1 = F.normalize(z0, dim=1, eps=NORM_EPS), F.normalize(z1, dim=1, eps=NORM_EPS)
    k0, k1 = (gather(z0), gather(z1)) if gather_distributed else (z0, z1)  # (N, D), N = W*B
    n = k0.shape[0]
    if n < 2:
        raise ValueError("nt_xent_loss needs at least 2 images in the global batch: with 1 there is no negative")
    start = local_offset(b) if gather_distributed else 0
    anchors = torch.cat([z0, z1])  # (2B, D)
    logits = anchors @ torch.cat([k0, k1]).t() / temperature  # (2B, 2N): columns [view 0 | view 1] of the global batch
    own = start + torch.arange(b, device=z0.device)
    self_col = torch.cat([own, n + own])  # (2B,) each anchor's own column, never a candidate
    pos_col = torch.cat([n + own, own])  # (2B,) the other view of the same image
    rows = torch.arange(2 * b, device=z0.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_col] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, pos_col)


@float32_loss
def info_nce_loss(query: Tensor, key: Tensor, negatives: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v2's InfoNCE: each query against its key (positive) and ``K`` negatives.

    ``query`` (B, D) from the query encoder; ``key`` (B, D) from the momentum encoder, a stop-gradient target;
    ``negatives`` (K, D), already L2-normalised (queued keys). Returns the mean cross-entropy over the ``B`` queries.
    Default temperature: MoCo v2's 0.2.
    """
    _check_temperature(temperature)
    q = F.normalize(query, dim=1, eps=NORM_EPS)
    k = F.normalize(key.detach(), dim=1, eps=NORM_EPS)
    pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    neg = q @ negatives.detach().t()  # (B, K)
    logits = torch.cat([pos, neg], dim=1) / temperature  # (B, 1 + K), the positive in column 0
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class QueueInfoNCELoss(nn.Module):
    """MoCo v2's loss with its queue: negatives are the queue *before* this step's keys are added, then the
    normalised keys of every rank are enqueued (all ranks keep the same queue; it is saved with the model).

    ``forward(query (B, D), key (B, D), update=True) -> loss``; ``update=False`` leaves the queue unchanged
    (evaluation).
    """

    def __init__(self, queue_size: int = 65536, dim: int = 128, temperature: float = 0.2,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.queue = FeatureQueue(queue_size, dim, init="random", generator=generator)

    def forward(self, query: Tensor, key: Tensor, update: bool = True) -> Tensor:
        loss = info_nce_loss(query, key, self.queue.contents(), self.temperature)
        if update:
            self.queue.enqueue(F.normalize(key.detach().float(), dim=1, eps=NORM_EPS))
        return loss


@float32_loss
def moco_v3_contrastive(q: Tensor, k: Tensor, temperature: float = 0.2, gather_distributed: bool = True) -> Tensor:
    """MoCo v3's ``ctr(q, k)``: queries (B, D) against the keys (stop-gradient) of the whole global batch,
    the positive being the key of the same image; cross-entropy scaled by ``2 * temperature`` (official code).
    Default temperature: MoCo v3's ViT value, 0.2."""
    _check_temperature(temperature)
    q = F.normalize(q, dim=1, eps=NORM_EPS)
    k = F.normalize(k.detach(), dim=1, eps=NORM_EPS)
    keys = concat_all_gather(k) if gather_distributed else k  # (W*B, D)
    start = local_offset(q.shape[0]) if gather_distributed else 0
    logits = q @ keys.t() / temperature  # (B, W*B)
    labels = start + torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def moco_v3_loss(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, temperature: float = 0.2,
                 gather_distributed: bool = True) -> Tensor:
    """MoCo v3's symmetric loss ``ctr(q1, k2) + ctr(q2, k1)``: ``q*`` (B, D) predictor outputs of the base encoder,
    ``k*`` (B, D) projector outputs of the momentum encoder, for views 1 and 2."""
    return (moco_v3_contrastive(q1, k2, temperature, gather_distributed)
            + moco_v3_contrastive(q2, k1, temperature, gather_distributed))
