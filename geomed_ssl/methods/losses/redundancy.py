"""Redundancy-reduction losses on the two views' embeddings: Barlow Twins and VICReg.

Shapes: ``z_a``, ``z_b`` (B, D) projector / expander outputs of views A and B, ``B`` per rank. Under DDP the
embeddings are gathered (gradients reach every rank, :func:`geomed_ssl.methods.distributed.gather`) and the loss
is computed on the global batch, the same value on every rank: the statistics (per-dimension mean, variance,
cross-correlation, covariance) are those of the global batch, as in the official code. Float32 with autocast off.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from geomed_ssl.methods.distributed import gather
from geomed_ssl.methods.losses.precision import float32_loss

BN_EPS = 1e-5  # BatchNorm1d's, which the official Barlow Twins applies (affine=False) before the cross-correlation
VICREG_EPS = 1e-4  # inside VICReg's sqrt(var + eps)


def off_diagonal(m: Tensor) -> Tensor:
    """The ``n * (n - 1)`` off-diagonal entries of a square (n, n) matrix, flattened."""
    n = m.shape[0]
    if m.shape != (n, n):
        raise ValueError(f"off_diagonal wants a square matrix, got {tuple(m.shape)}")
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _pair(z_a: Tensor, z_b: Tensor, gather_distributed: bool) -> tuple[Tensor, Tensor]:
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"want two (B, D) tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if gather_distributed:
        z_a, z_b = gather(z_a), gather(z_b)
    if z_a.shape[0] < 2:
        raise ValueError(f"batch statistics need at least 2 samples in the global batch, got {z_a.shape[0]}")
    return z_a, z_b


class BarlowTwinsTerms(NamedTuple):
    invariance: Tensor  # sum_i (1 - C_ii)^2
    redundancy: Tensor  # sum_{i != j} C_ij^2


@float32_loss
def barlow_twins_terms(z_a: Tensor, z_b: Tensor, gather_distributed: bool = True) -> BarlowTwinsTerms:
    """The two terms of Barlow Twins, from the cross-correlation ``C`` (D, D) of the batch-standardised views."""
    z_a, z_b = _pair(z_a, z_b, gather_distributed)  # (N, D) each
    n = z_a.shape[0]
    a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + BN_EPS)
    b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + BN_EPS)
    c = a.t() @ b / n  # (D, D)
    return BarlowTwinsTerms(invariance=(torch.diagonal(c) - 1).pow(2).sum(), redundancy=off_diagonal(c).pow(2).sum())


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambda_offdiag: float = 0.0051,
                      gather_distributed: bool = True) -> Tensor:
    """Barlow Twins: ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``; ``lambda`` from the official code
    (0.0051; the paper rounds it to 5e-3, lightly's default)."""
    t = barlow_twins_terms(z_a, z_b, gather_distributed)
    return t.invariance + lambda_offdiag * t.redundancy


class VICRegTerms(NamedTuple):
    invariance: Tensor  # mean squared error between the views
    variance: Tensor  # hinge on each dimension's std, mean of the two views
    covariance: Tensor  # squared off-diagonal covariances / D, summed over the two views


def _variance(z: Tensor) -> Tensor:
    return F.relu(1.0 - torch.sqrt(z.var(0) + VICREG_EPS)).mean()


def _covariance(z: Tensor) -> Tensor:
    z = z - z.mean(0)
    cov = z.t() @ z / (z.shape[0] - 1)  # (D, D)
    return off_diagonal(cov).pow(2).sum() / z.shape[1]


@float32_loss
def vicreg_terms(z_a: Tensor, z_b: Tensor, gather_distributed: bool = True) -> VICRegTerms:
    """VICReg's invariance, variance and covariance terms (unweighted), on the global batch."""
    z_a, z_b = _pair(z_a, z_b, gather_distributed)  # (N, D) each
    return VICRegTerms(
        invariance=F.mse_loss(z_a, z_b),
        variance=0.5 * (_variance(z_a) + _variance(z_b)),
        covariance=_covariance(z_a) + _covariance(z_b),
    )


def vicreg_loss(z_a: Tensor, z_b: Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, gather_distributed: bool = True) -> Tensor:
    """VICReg: ``25 * invariance + 25 * variance + 1 * covariance`` (the paper's weights lambda, mu, nu)."""
    t = vicreg_terms(z_a, z_b, gather_distributed)
    return invariance_weight * t.invariance + variance_weight * t.variance + covariance_weight * t.covariance
