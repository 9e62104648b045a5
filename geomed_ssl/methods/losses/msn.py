"""MSN's loss (Assran et al., 2022): the anchors' soft assignments to learnable prototypes predict the sharpened,
Sinkhorn-balanced assignments of the target, plus mean-entropy maximisation (ME-MAX) of the anchors' average.

Official ``init_msn_loss``: assignments are softmaxes of cosine similarities to the prototypes at ``temperature``;
the target's is sharpened by ``p ** (1 / sharpen)``, i.e. a softmax at ``temperature * sharpen``, then balanced by
Sinkhorn-Knopp over the global batch (started from those probabilities, as the official code does). Every anchor
view of a sample predicts its one target. ME-MAX is ``log K - H(mean anchor prediction over the global batch)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from geomed_ssl.methods.distributed import all_reduce_sum
from geomed_ssl.methods.losses.precision import float32_loss
from geomed_ssl.methods.losses.sinkhorn import TINY, sinkhorn_knopp


class MSNTerms(NamedTuple):
    """``cross_entropy`` and ``memax`` carry gradients; ``targets`` (B, K) are the balanced target assignments."""

    cross_entropy: Tensor
    memax: Tensor
    targets: Tensor


@float32_loss
def msn_terms(anchors: Tensor, target: Tensor, prototypes: Tensor, temperature: float = 0.1, sharpen: float = 0.25,
              sinkhorn_iterations: int = 3, distributed: bool = True) -> MSNTerms:
    """``anchors`` (V*B, P), V views of B samples view-major; ``target`` (B, P); ``prototypes`` (K, P) -> the
    terms. ``sinkhorn_iterations`` 0 leaves the sharpened targets unbalanced. Under DDP (``distributed``) the
    balance and the mean prediction are the global batch's, so N processes give one process's loss."""
    if anchors.shape[0] % max(1, target.shape[0]):
        raise ValueError(f"{anchors.shape[0]} anchor rows are not whole views of {target.shape[0]} targets")
    protos = F.normalize(prototypes, dim=1)
    log_probs = F.log_softmax(F.normalize(anchors, dim=1) @ protos.T / temperature, dim=1)  # (V*B, K)
    with torch.no_grad():
        sharp = F.log_softmax(F.normalize(target, dim=1) @ protos.T / (temperature * sharpen), dim=1)  # (B, K)
        targets = (sinkhorn_knopp(sharp, 1.0, sinkhorn_iterations, distributed) if sinkhorn_iterations
                   else sharp.exp())
    views = anchors.shape[0] // max(1, target.shape[0])
    cross_entropy = -(targets.repeat(views, 1) * log_probs).sum(dim=1).mean()
    reduce = all_reduce_sum if distributed else (lambda t: t)
    count = reduce(log_probs.new_tensor(float(log_probs.shape[0])))
    mean = reduce(log_probs.exp().sum(dim=0)) / count  # (K,) the global batch's mean prediction
    memax = (mean * mean.clamp_min(TINY).log()).sum() + math.log(mean.shape[0])
    return MSNTerms(cross_entropy, memax, targets)
