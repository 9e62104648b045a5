"""Negative cosine similarity of BYOL and SimSiam: a prediction regresses onto a stop-gradient target.

Shapes: ``p`` predictions (B, D) of the online branch, ``z`` targets (B, D) (BYOL: the momentum network's
projections; SimSiam: the same network's projections of the other view). Float32 with autocast off.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from geomed_ssl.methods.losses.precision import float32_loss

COSINE_EPS = 1e-8  # floor on each norm, as torch.nn.functional.cosine_similarity


@float32_loss
def negative_cosine_similarity(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    """``-mean_i cos(p_i, z_i)``, in [-1, 1]; ``z`` is detached unless ``stop_gradient=False``. BYOL's
    ``2 - 2 cos`` is ``2 + 2 *`` this, the same gradient up to a factor 2."""
    if stop_gradient:
        z = z.detach()
    return -F.cosine_similarity(p, z, dim=-1, eps=COSINE_EPS).mean()


def symmetric_negative_cosine(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's / BYOL's symmetrised loss ``(D(p1, sg(z2)) + D(p2, sg(z1))) / 2``: each view's prediction
    regresses onto the other view's target."""
    return 0.5 * (negative_cosine_similarity(p1, z2) + negative_cosine_similarity(p2, z1))
