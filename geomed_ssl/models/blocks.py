"""The transformer pieces the encoder and MAE's decoder share: timm ``Block`` stacks and MAE's weight init."""

from __future__ import annotations

from functools import partial

from timm.models.vision_transformer import Block
from torch import nn


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
    """``depth`` timm Blocks (fused SDPA attention, exact GELU) with a linear stochastic-depth ramp."""
    norm = partial(nn.LayerNorm, eps=norm_eps)
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm) for r in rates
    )
