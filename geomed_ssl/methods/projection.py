"""Projection / prediction MLPs of the contrastive, siamese and clustering methods, and a prototypes layer.

One builder, :class:`ProjectionMLP`, and one factory per method with that paper's layout and sizes (hidden and
output widths are arguments: the paper sizes suit ResNet-50 on ImageNet, small ViTs on small data want less).
Hidden layers are ``Linear -> BatchNorm1d -> ReLU`` (``Linear`` without bias before a BatchNorm, which would undo
it). Shapes: ``(B, in_dim) -> (B, out_dim)``.

The BatchNorms are :class:`GlobalBatchNorm1d`: under DDP they normalise over the global batch, as the official
SimCLR, MoCo v3, BYOL and Barlow Twins runs do with SyncBatchNorm (which runs on GPUs only), so N processes of batch
B train as one of batch N*B; in one process they are ``nn.BatchNorm1d``. A BatchNorm in training mode needs at
least 2 samples per rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.methods.distributed import all_reduce_sum, is_distributed

LAST_NORMS = ("none", "affine", "plain")
ACTIVATIONS = ("relu", "gelu")


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training-mode statistics are those of the global batch under DDP: the per-rank
    sums are all-reduced with gradients (:func:`all_reduce_sum`), on any device and backend (gloo on CPU too).
    Outside a process group, or in eval mode, it is exactly ``nn.BatchNorm1d`` (same parameters and buffers)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, C) -> (B, C)
        if not (self.training and is_distributed()):
            return super().forward(x)
        xf = x.float()
        n = all_reduce_sum(xf.new_tensor(float(xf.shape[0])).detach())
        mean = all_reduce_sum(xf.sum(dim=0)) / n  # (C,)
        var = all_reduce_sum(((xf - mean) ** 2).sum(dim=0)) / n  # (C,) biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        y = (xf - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


class ProjectionMLP(nn.Sequential):
    """``len(dims) - 1`` linear layers ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Every layer but the last is followed by BatchNorm (when ``batch_norm``) and ``activation`` (ReLU, or GELU as
    MSN's head). The last layer has a bias
    unless a BatchNorm follows it; ``last_norm`` adds a BatchNorm after it: ``"affine"`` (learned scale and shift),
    ``"plain"`` (``affine=False``: MoCo v3 and SimSiam outputs) or ``"none"``.
    """

    def __init__(self, dims: Sequence[int], batch_norm: bool = True, last_norm: str = "none",
                 activation: str = "relu") -> None:
        if len(dims) < 2:
            raise ValueError(f"ProjectionMLP needs at least [in_dim, out_dim], got {list(dims)}")
        if last_norm not in LAST_NORMS:
            raise ValueError(f"last_norm must be one of {LAST_NORMS}, got {last_norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1]):
            layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            if batch_norm:
                layers.append(GlobalBatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True) if activation == "relu" else nn.GELU())
        layers.append(nn.Linear(dims[-2], dims[-1], bias=last_norm == "none"))
        if last_norm != "none":
            layers.append(GlobalBatchNorm1d(dims[-1], affine=last_norm == "affine"))
        super().__init__(*layers)
        self.in_dim, self.out_dim = int(dims[0]), int(dims[-1])


def _dims(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> list[int]:
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    return [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]


def simclr_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2) -> ProjectionMLP:
    """SimCLR: ``num_layers`` layers with BatchNorm (2 in v1, 3 in v2)."""
    return ProjectionMLP(_dims(in_dim, hidden_dim, out_dim, num_layers))


def moco_v2_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> ProjectionMLP:
    """MoCo v2: ``Linear -> ReLU -> Linear``, no BatchNorm."""
    return ProjectionMLP([in_dim, hidden_dim, out_dim], batch_norm=False)


def moco_v3_projector(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 3) -> ProjectionMLP:
    """MoCo v3 (ViT): 3 layers, BatchNorm everywhere, the output one without affine."""
    return ProjectionMLP(_dims(in_dim, hidden_dim, out_dim, num_layers), last_norm="plain")


def moco_v3_predictor(dim: int = 256, hidden_dim: int = 4096, num_layers: int = 2) -> ProjectionMLP:
    """MoCo v3 predictor (query branch only): 2 layers, the output BatchNorm without affine."""
    return ProjectionMLP(_dims(dim, hidden_dim, dim, num_layers), last_norm="plain")


def byol_projector(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> ProjectionMLP:
    """BYOL projector: ``Linear -> BN -> ReLU -> Linear``."""
    return ProjectionMLP([in_dim, hidden_dim, out_dim])


def byol_predictor(dim: int = 256, hidden_dim: int = 4096) -> ProjectionMLP:
    """BYOL predictor (online branch only): the projector's layout, ``dim -> hidden -> dim``."""
    return ProjectionMLP([dim, hidden_dim, dim])


def simsiam_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048, num_layers: int = 3) -> ProjectionMLP:
    """SimSiam projector: 3 layers, BatchNorm everywhere, the output one without affine."""
    return ProjectionMLP(_dims(in_dim, hidden_dim, out_dim, num_layers), last_norm="plain")


def simsiam_predictor(dim: int = 2048, hidden_dim: int = 512) -> ProjectionMLP:
    """SimSiam predictor: a bottleneck ``dim -> hidden -> dim`` (BN and ReLU in the middle only)."""
    return ProjectionMLP([dim, hidden_dim, dim])


def barlow_twins_projector(in_dim: int, hidden_dim: int = 8192, out_dim: int = 8192,
                           num_layers: int = 3) -> ProjectionMLP:
    """Barlow Twins projector / VICReg expander: 3 wide layers, the last a plain ``Linear``."""
    return ProjectionMLP(_dims(in_dim, hidden_dim, out_dim, num_layers))


vicreg_expander = barlow_twins_projector


def msn_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> ProjectionMLP:
    """MSN: ``Linear -> BN -> GELU`` twice, then ``Linear``; its output is compared with the prototypes."""
    return ProjectionMLP([in_dim, hidden_dim, hidden_dim, out_dim], activation="gelu")


def swav_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> ProjectionMLP:
    """SwAV / DeepCluster-v2 projector: ``Linear -> BN -> ReLU -> Linear``; L2-normalise its output before
    :class:`Prototypes`."""
    return ProjectionMLP([in_dim, hidden_dim, out_dim])


class Prototypes(nn.Module):
    """One or more bias-free linear layers of prototypes (SwAV: one; DeepCluster-v2: one per k-means run).

    ``forward`` maps L2-normalised embeddings (..., dim) to cosine scores (..., K_h), one tensor per head (a list
    when there are several heads). Keep the rows unit-norm with :meth:`normalize_` before each step (SwAV), or set
    them from k-means centroids with :meth:`set_` (DeepCluster-v2).
    """

    def __init__(self, dim: int, n_prototypes: int | Sequence[int]) -> None:
        super().__init__()
        sizes = [n_prototypes] if isinstance(n_prototypes, int) else list(n_prototypes)
        if not sizes or any(int(k) <= 0 for k in sizes):
            raise ValueError(f"n_prototypes must be positive, got {n_prototypes}")
        self.multi_head = not isinstance(n_prototypes, int)
        self.heads = nn.ModuleList(nn.Linear(dim, int(k), bias=False) for k in sizes)
        self.normalize_()

    @property
    def sizes(self) -> list[int]:
        return [h.out_features for h in self.heads]

    @torch.no_grad()
    def normalize_(self) -> None:
        """L2-normalise every prototype in place."""
        for h in self.heads:
            h.weight.copy_(F.normalize(h.weight, dim=1))

    @torch.no_grad()
    def set_(self, head: int, centroids: Tensor) -> None:
        """Replace the prototypes of ``head`` by ``centroids`` (K_h, dim)."""
        self.heads[head].weight.copy_(centroids)

    def forward(self, z: Tensor) -> Tensor | list[Tensor]:
        out = [h(z) for h in self.heads]
        return out if self.multi_head else out[0]
