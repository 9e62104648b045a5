"""Pure, step-based schedules, indexed by optimiser step: one warmup-cosine (:func:`cosine`) for the learning rate
and for DINO's values (official ``cosine_scheduler`` / ``linspace`` warmups), and DINO's linear warmup.

Every function maps a step to a float without state, so a resumed run recomputes the exact same value. Steps are
optimiser steps, or the float schedule steps of a :class:`ScheduleClock` when a resumed run was given another length.
"""

from __future__ import annotations

import math

from geomed_ssl.once import said_set


def linear_warmup(step: float, start: float, end: float, warmup_steps: int) -> float:
    """``linspace(start, end, warmup_steps)[step]`` during warmup, ``end`` afterwards (DINO's teacher temperature)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    step = max(step, 0)
    if warmup_steps == 1:
        return float(start)
    return float(start + (end - start) * step / (warmup_steps - 1))


WARMUPS = ("linspace", "ramp")


def cosine(
    step: float, base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0,
    warmup: str = "linspace",
) -> float:
    """Warmup then cosine, at one step: the one schedule behind the learning rate and DINO's values.

    Warmup (``step < warmup_steps``), two shapes:

    - ``"linspace"`` (DINO's ``cosine_scheduler``): ``linspace(warmup_start, base, warmup_steps)[step]``, from
      ``warmup_start`` at step 0 to ``base`` at the last warmup step;
    - ``"ramp"`` (the learning rate): ``base * (step + 1) / warmup_steps``, so step 0 already trains at
      ``base / warmup_steps`` (never 0) and the last warmup step reaches ``base``; ``warmup_start`` is unused.

    Then ``final + (base - final) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup_steps) / T`` clipped to
    [0, 1], ``T = max(1, total_steps - warmup_steps)``: ``final`` from ``total_steps`` on.
    """
    if warmup not in WARMUPS:
        raise ValueError(f"warmup must be one of {', '.join(WARMUPS)}, got {warmup!r}")
    step = max(step, 0)
    if step < warmup_steps:
        if warmup == "ramp":
            return base * (step + 1) / warmup_steps
        return linear_warmup(step, warmup_start, base, warmup_steps)
    progress = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
    return float(final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(step: float, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step``: :func:`cosine` from 1 to ``min_ratio`` with the ``ramp``
    warmup."""
    return cosine(step, 1.0, min_ratio, max_steps, warmup_steps, warmup="ramp")


def teacher_momentum(step: float, base: float, total_steps: int) -> float:
    """EMA momentum of the teacher: cosine from ``base`` (e.g. 0.996) to 1 over ``total_steps``."""
    return cosine(step, base, 1.0, total_steps)


class ScheduleClock:
    """Maps an optimiser step to the step of the schedules the run was started with (``total`` steps long).

    A fresh run maps every step to itself. A run resumed at step ``s`` with another ``train.max_steps`` (``end``)
    keeps what it has done and maps its remaining steps linearly onto the remaining part of its schedules: step
    ``s`` stays where it was (schedule step ``v``) and step ``end`` reaches ``total``, so every value (learning
    rate, teacher momentum and temperature, weight decay) continues from where it was, without a jump, and ends at
    its final value at the new end. Each resume that changes the end adds a knot; the clock is stored in every
    checkpoint.
    """

    def __init__(self, total: int, end: int | None = None, knots: list[list[float]] | None = None) -> None:
        self.total = int(total)
        self.end = int(total if end is None else end)
        self.knots = [[int(s), float(v)] for s, v in (knots or [[0, 0.0]])]  # ascending [step, schedule step]

    def __call__(self, step: float) -> float:
        """The schedule step (a float once stretched) at optimiser step ``step``."""
        knots = self.knots
        i = max(j for j, (s, _) in enumerate(knots) if s <= step) if step >= knots[0][0] else 0
        s, v = knots[i]
        s_next, v_next = knots[i + 1] if i + 1 < len(knots) else (self.end, float(self.total))
        if s_next <= s:
            return v
        if v_next - v == s_next - s:  # not stretched: exactly the step (keeps a plain resume bit-identical)
            return v + (step - s)
        return min(v + (step - s) * (v_next - v) / (s_next - s), v_next)

    def resumed(self, step: int, end: int) -> ScheduleClock:
        """The clock for a run resumed at ``step`` that now ends at ``end`` (this clock itself when the end is
        unchanged: a plain resume keeps every value bit for bit, and requeues add no knots)."""
        if end == self.end:
            return self
        knots = [k for k in self.knots if k[0] < step] + [[int(step), self(step)]]
        return ScheduleClock(self.total, end, knots)

    def to_dict(self) -> dict:
        return {"total": self.total, "end": self.end, "knots": [list(k) for k in self.knots]}

    @classmethod
    def from_dict(cls, raw: dict) -> ScheduleClock:
        return cls(int(raw["total"]), int(raw["end"]), [list(k) for k in raw["knots"]])

    def __repr__(self) -> str:
        return f"ScheduleClock(total={self.total}, end={self.end}, knots={self.knots})"


_FROZEN_SAID: set[tuple[str, int, int]] = said_set()  # once per setting, whichever check (recipe, method) met it


def warn_frozen_run(source: str, key: str, steps: int | None, max_steps: int | None) -> None:
    """A warning (once) when ``method.<key>``, a number of steps at the start during which a part of the method does
    not learn, covers the whole run of ``max_steps``: that part never trains."""
    if steps is None or max_steps is None or steps < max_steps or (key, steps, max_steps) in _FROZEN_SAID:
        return
    _FROZEN_SAID.add((key, steps, max_steps))
    import logging

    logging.getLogger("geomed_ssl").warning(
        f"warning: {source}: method.{key} {steps} >= train.max_steps {max_steps}: that part stays frozen for the "
        f"whole run and never learns; lower it (e.g. {max(1, max_steps // 10)}) or leave it null (a share of "
        "max_steps).")
