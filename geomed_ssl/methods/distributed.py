"""Collectives for losses computed over the global batch; every helper is a no-op in a single process.

Gradients under DDP. DDP averages the parameter gradients of the ``W`` ranks, so a loss is exact when the mean of
the per-rank losses is the global-batch loss (local anchors against gathered keys, or the same global loss on
every rank) *and* each rank's local embeddings receive the gradient of every rank's loss, not only its own.
:func:`gather` does both: the forward is ``all_gather`` with the own slice being the local tensor itself, and the
backward sums the gradient of the gathered tensor over ranks before taking the own slice. Gathering without that
sum (plain ``all_gather`` then putting the local tensor back in its slot) drops the terms other ranks' losses
contribute through this rank's samples: negatives stop pushing apart across ranks, and a loss computed on the
global batch on every rank ends up with ``1/W`` of its gradient (lightly #1528, #1977).

Every rank must pass tensors of the same shape (``DistributedSampler`` pads the dataset so that it is so).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sums the gathered gradient over ranks and keeps the own slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # x (B, ...) -> (W*B, ...)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        parts[dist.get_rank()] = x  # the local tensor itself, bit-identical to what the other ranks received
        ctx.n = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # grad (W*B, ...) -> (B, ...)
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.n
        return grad[start : start + ctx.n]


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) of every rank in rank order: (W*B, ...); gradients reach the local rows from every
    rank's loss (see the module docstring). The local rows start at :func:`local_offset`. Returns ``x`` itself in
    a single process."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) of every rank, without gradient: (W*B, ...). For stop-gradient keys (MoCo) and
    for queue / memory-bank updates, so that every rank enqueues the same rows."""
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def local_offset(batch_size: int) -> int:
    """Index of this rank's first row in a gathered tensor whose per-rank blocks have ``batch_size`` rows."""
    return rank() * batch_size


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over ranks, differentiable: the backward sums the gradient over ranks too, so each rank's
    contribution receives the gradient of every rank's loss (global-batch statistics, e.g. BatchNorm). Returns
    ``x`` itself in a single process."""
    if not is_distributed():
        return x
    return _SumWithGrad.apply(x)


class _SumWithGrad(torch.autograd.Function):
    """``all_reduce`` (sum) whose backward sums the gradient over ranks too (torch's own,
    ``torch.distributed.nn.functional.all_reduce``, is deprecated and warned on every rank at every step)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


@torch.no_grad()
def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place and return it (no autograd; Sinkhorn sums, k-means sums and counts)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def all_reduce_max_(t: Tensor) -> Tensor:
    """Maximum of ``t`` over ranks, in place (no autograd)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


@torch.no_grad()
def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` in place with rank ``src``'s values (initial k-means centroids drawn on one rank)."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t
