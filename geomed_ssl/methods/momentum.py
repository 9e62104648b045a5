"""Momentum (EMA) targets: one helper for every teacher / key / target network (DINO, MoCo, BYOL).

A method declares its ``(online, target)`` module pairs once; :func:`ema_update_` moves every target parameter
towards its online twin, ``target <- m * target + (1 - m) * online`` (one fused ``lerp`` per dtype and device),
and copies the buffers (BatchNorm running statistics). :func:`momentum_at` gives ``m`` at a step: BYOL's and
DINO's cosine from ``base`` to 1, or a constant (MoCo v2) with ``final=base``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from itertools import zip_longest

import torch
from torch import Tensor, nn

from geomed_ssl.methods.schedules import cosine, teacher_momentum
from geomed_ssl.models.blocks import SampleDropPath

MomentumPair = tuple[nn.Module, nn.Module]


def momentum_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` to serve as its EMA target: same weights, ``requires_grad=False`` everywhere, and
    stochastic depth off, so the target is a fixed function of its weights (as the official MoCo v3 and BYOL targets
    and DINO's teacher, built without drop path)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    for module in target.modules():
        if isinstance(module, SampleDropPath):
            module.drop_prob = 0.0
    return target


def momentum_at(step: int, base: float, total_steps: int, final: float = 1.0) -> float:
    """EMA momentum at ``step``: cosine from ``base`` to ``final`` over ``total_steps`` (``final=1``: the BYOL /
    DINO / MoCo v3 schedule, :func:`teacher_momentum`); ``final=base`` keeps it constant (MoCo v2)."""
    if final == 1.0:
        return teacher_momentum(step, base, total_steps)
    return cosine(step, base, final, total_steps)


def _check_pair(online: nn.Module, target: nn.Module) -> None:
    names_o = [(n, p.shape) for n, p in online.named_parameters()]
    names_t = [(n, p.shape) for n, p in target.named_parameters()]
    if names_o != names_t:
        first = next((a, b) for a, b in zip_longest(names_o, names_t) if a != b)
        raise ValueError(
            f"momentum pair {type(online).__name__} -> {type(target).__name__}: parameters differ "
            f"({len(names_o)} online vs {len(names_t)} target; first mismatch online {first[0]} target {first[1]})"
        )
    if [n for n, _ in online.named_buffers()] != [n for n, _ in target.named_buffers()]:
        raise ValueError(f"momentum pair {type(online).__name__}: buffers differ between online and target")


def check_momentum_pairs(pairs: Iterable[MomentumPair]) -> None:
    """Raise ``ValueError`` if a pair's parameter names / shapes or buffer names differ (call once, at build)."""
    for online, target in pairs:
        _check_pair(online, target)


@torch.no_grad()
def ema_update_(pairs: Iterable[MomentumPair], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter of every pair; buffers are
    copied from online to target. Pairs are matched parameter by parameter (see :func:`check_momentum_pairs`)."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for online, target in pairs:
        for po, pt in zip(online.parameters(), target.parameters(), strict=True):
            dst, src = groups.setdefault((pt.device, pt.dtype), ([], []))
            dst.append(pt.data)
            src.append(po.detach().to(device=pt.device, dtype=pt.dtype))
        for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
            bt.copy_(bo)
    weight = 1.0 - float(momentum)
    for dst, src in groups.values():
        torch._foreach_lerp_(dst, src, weight)
