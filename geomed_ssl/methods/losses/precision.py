"""Losses compute in float32 whatever autocast says: bf16 / fp16 logits lose the small differences a softmax over
thousands of negatives or a Sinkhorn ``exp(scores / 0.05)`` depend on, and fp16 overflows there."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _to_float32(x: Any) -> Any:
    if torch.is_tensor(x) and x.is_floating_point():
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x


def float32_loss(fn: F) -> F:
    """Run ``fn`` with autocast off and its floating tensor arguments (also inside lists / tuples) cast to
    float32; gradients flow back to the inputs in their own dtype."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_to_float32(a) for a in args)
        kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
