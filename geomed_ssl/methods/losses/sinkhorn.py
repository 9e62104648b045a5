"""Sinkhorn-Knopp: soft assignments of samples to prototypes with equal prototype mass (SwAV; DINOv2 centering).

Under DDP the prototype sums, the total mass and the sample count are all-reduced, so the assignments are those of
the global batch while each rank keeps its own rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomed_ssl.methods.distributed import all_reduce_max_, all_reduce_sum_

TINY = 1e-30  # floor on the sums, for scores so spread that whole rows of exp() underflow


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, distributed: bool = True) -> Tensor:
    """``scores`` (M, K) of this rank's samples against K prototypes -> assignments (M, K), each row summing to 1,
    each prototype receiving ``M_global / K`` of the mass as ``iterations`` grows (official SwAV ``distributed_
    sinkhorn``; ``epsilon`` is its entropic regularisation, a temperature).

    Computed in float32. Each prototype's maximum score over the global batch is subtracted before ``exp``: a
    factor per prototype, which the first prototype normalisation cancels exactly, so ``exp(scores / epsilon)``
    cannot overflow and every prototype keeps a non-zero mass.
    """
    if not epsilon > 0:
        raise ValueError(f"sinkhorn epsilon must be positive, got {epsilon}")
    reduce_sum = all_reduce_sum_ if distributed else (lambda t: t)
    x = scores.detach().float() / epsilon  # (M, K)
    local_max = x.max(dim=0).values if x.shape[0] else x.new_full((x.shape[1],), float("-inf"))  # (K,)
    x = x - (all_reduce_max_(local_max.clone()) if distributed else local_max)
    q = torch.exp(x).t()  # (K, M)
    k = q.shape[0]
    m = reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))  # samples over all ranks
    q = q / reduce_sum(q.sum()).clamp_min(TINY)
    for _ in range(iterations):
        q = q / reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(TINY)  # each prototype: mass 1 ...
        q = q / k  # ... then 1/K
        q = q / q.sum(dim=0, keepdim=True).clamp_min(TINY)  # each sample: mass 1 ...
        q = q / m  # ... then 1/M
    return (q * m).t()
