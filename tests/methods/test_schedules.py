"""Step-based schedules give DINO's values (its numpy ``cosine_scheduler`` and ``linspace`` warmup) at each step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomed_ssl.methods.schedules import cosine, linear_warmup, teacher_momentum


def official_cosine_scheduler(base: float, final: float, total: int, warmup: int = 0, start: float = 0.0) -> np.ndarray:
    """DINO's utils.cosine_scheduler with one iteration per epoch (the reference the schedules follow)."""
    warm = np.linspace(start, base, warmup) if warmup > 0 else np.array([])
    iters = np.arange(total - warmup)
    sched = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, sched))


@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_matches_official_scheduler_at_every_step(warmup: int) -> None:
    ref = official_cosine_scheduler(0.04, 0.4, 50, warmup, start=0.01)
    got = [cosine(i, 0.04, 0.4, 50, warmup, warmup_start=0.01) for i in range(50)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert cosine(50, 0.04, 0.4, 50) == 0.4 and cosine(10**6, 0.04, 0.4, 50) == 0.4


def test_weight_decay_and_momentum_endpoints_and_midpoint() -> None:
    assert cosine(0, 0.04, 0.4, 100) == pytest.approx(0.04)
    assert cosine(50, 0.04, 0.4, 100) == pytest.approx(0.22)
    assert teacher_momentum(0, 0.996, 100) == pytest.approx(0.996)
    assert teacher_momentum(50, 0.996, 100) == pytest.approx(0.998)
    assert teacher_momentum(100, 0.996, 100) == 1.0
    values = [teacher_momentum(i, 0.996, 100) for i in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_teacher_temperature_warmup_is_linspace_then_constant() -> None:
    ref = np.concatenate((np.linspace(0.04, 0.07, 30), np.full(20, 0.07)))
    np.testing.assert_allclose([linear_warmup(i, 0.04, 0.07, 30) for i in range(50)], ref, rtol=1e-12)
    assert linear_warmup(0, 0.04, 0.07, 0) == 0.07
    assert math.isclose(linear_warmup(15, 0.04, 0.07, 31), 0.055)
