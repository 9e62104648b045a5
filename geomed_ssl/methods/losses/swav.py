"""SwAV's swapped-prediction loss, multi-crop aware.

Each crop's embedding is scored against the prototypes (cosine scores, (B, K)). Codes (targets) come from the
global (high-resolution) crops only, through Sinkhorn-Knopp over the global batch (and an optional queue of past
scores); every other crop, global or local, predicts them with a softmax at ``temperature``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from geomed_ssl.methods.losses.precision import float32_loss
from geomed_ssl.methods.losses.sinkhorn import sinkhorn_knopp


@float32_loss
def swav_loss(global_scores: Sequence[Tensor], local_scores: Sequence[Tensor] = (), temperature: float = 0.1,
              epsilon: float = 0.05, sinkhorn_iterations: int = 3, queue_scores: Sequence[Tensor] | None = None,
              distributed: bool = True) -> Tensor:
    """SwAV loss.

    ``global_scores``: ``Vg >= 2`` tensors (B, K), prototype scores of the global crops (a stacked (Vg, B, K)
    works too); ``local_scores``: ``Vl`` tensors (B, K) of the local crops; ``queue_scores``: optional, one (Q, K)
    per global crop, the current prototypes' scores of queued embeddings, which only enlarge Sinkhorn's batch.

    For each global crop ``i``: codes ``q_i`` (B, K) = Sinkhorn of its scores (no gradient); its sub-loss is the
    mean over the other ``Vg + Vl - 1`` crops ``v`` of ``-sum_k q_ik log softmax(s_v / temperature)_k``, averaged
    over the batch. The loss is the mean over the global crops. Official defaults: temperature 0.1, epsilon 0.05,
    3 Sinkhorn iterations.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    globals_, locals_ = list(global_scores), list(local_scores)
    if len(globals_) < 2:
        raise ValueError(f"SwAV needs at least 2 global crops, got {len(globals_)}")
    if queue_scores is not None and len(queue_scores) != len(globals_):
        raise ValueError(f"queue_scores needs one tensor per global crop ({len(globals_)}), got {len(queue_scores)}")
    log_p = [F.log_softmax(s / temperature, dim=1) for s in globals_ + locals_]  # each (B, K)
    n_crops = len(log_p)
    total = globals_[0].new_zeros(())
    for i, s in enumerate(globals_):
        b = s.shape[0]
        with torch.no_grad():
            scores = s.detach() if queue_scores is None else torch.cat([s.detach(), queue_scores[i].detach()])
            q = sinkhorn_knopp(scores, epsilon, sinkhorn_iterations, distributed)[:b]  # (B, K)
        sub = sum(-(q * log_p[v]).sum(dim=1).mean() for v in range(n_crops) if v != i)
        total = total + sub / (n_crops - 1)
    return total / len(globals_)
