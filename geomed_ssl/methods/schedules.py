"""Pure, step-based schedules (official DINO ``cosine_scheduler`` / ``linspace`` warmups, indexed by optimiser step).

Every function maps an integer step to a float without state, so a resumed run recomputes the exact same value.
"""

from __future__ import annotations

import math


def linear_warmup(step: int, start: float, end: float, warmup_steps: int) -> float:
    """``linspace(start, end, warmup_steps)[step]`` during warmup, ``end`` afterwards (DINO's teacher temperature)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    step = max(int(step), 0)
    if warmup_steps == 1:
        return float(start)
    return float(start + (end - start) * step / (warmup_steps - 1))


def cosine(
    step: int, base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> float:
    """DINO's ``cosine_scheduler`` at one step: ``linspace(warmup_start, base, warmup_steps)`` during warmup, then
    ``final + (base - final) * (1 + cos(pi * t / T)) / 2`` with ``t = step - warmup_steps`` and
    ``T = total_steps - warmup_steps``; ``final`` from ``total_steps`` on."""
    step = max(int(step), 0)
    if step < warmup_steps:
        return linear_warmup(step, warmup_start, base, warmup_steps)
    span = total_steps - warmup_steps
    if span <= 0 or step >= total_steps:
        return float(final)
    t = step - warmup_steps
    return float(final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * t / span)))


def teacher_momentum(step: int, base: float, total_steps: int) -> float:
    """EMA momentum of the teacher: cosine from ``base`` (e.g. 0.996) to 1 over ``total_steps``."""
    return cosine(step, base, 1.0, total_steps)
