"""The transformer pieces the encoder and MAE's decoder share: timm ``Block`` stacks (with stochastic depth whose
draws can follow each sample) and MAE's weight init."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

import torch
from timm.models.vision_transformer import Block
from torch import nn

# draws(layer ordinal, call number, rows) -> (rows,) uniform [0, 1) draws, or None for the global torch RNG
Draws = Callable[[int, int, int], "torch.Tensor | None"]


class SampleDropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``: each row of the batch skips the residual branch with probability
    ``drop_prob``, kept rows scaled by 1 / (1 - drop_prob)) whose draws come from :func:`drop_path_draws`' source
    while one is set (each sample's own random stream in pretraining), else from the global torch RNG."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.draws: Callable[[int], torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        u = self.draws(x.shape[0]) if self.draws is not None else None
        u = torch.rand(x.shape[0], device=x.device) if u is None else u.to(x.device)
        mask = (u < keep).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


@contextmanager
def drop_path_draws(module: nn.Module, draws: Draws) -> Iterator[int]:
    """While active, every :class:`SampleDropPath` of ``module`` with a non-zero rate takes its keep draws from
    ``draws(ordinal, call, rows)``: ``ordinal`` its place among them (module order, the same in every process),
    ``call`` how many times it ran before in this context. Yields how many there are."""
    layers = [m for m in module.modules() if isinstance(m, SampleDropPath) and m.drop_prob > 0]
    for ordinal, layer in enumerate(layers):
        calls = itertools.count()
        layer.draws = partial(lambda o, c, rows: draws(o, next(c), rows), ordinal, calls)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.draws = None


def init_mae_weights(module: nn.Module) -> None:
    """MAE init for a module tree: xavier_uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                drop_path: float = 0.0) -> nn.ModuleList:
    """``depth`` timm Blocks (fused SDPA attention, exact GELU) with a linear stochastic-depth ramp
    (:class:`SampleDropPath` in place of timm's ``DropPath``; no parameters, so state dicts are timm's)."""
    norm = partial(nn.LayerNorm, eps=norm_eps)
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    blocks = nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm) for r in rates
    )
    for block, rate in zip(blocks, rates):
        block.drop_path1, block.drop_path2 = SampleDropPath(rate), SampleDropPath(rate)
    return blocks
