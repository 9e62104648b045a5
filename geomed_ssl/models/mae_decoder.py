"""MAE's light decoder: visible tokens + mask tokens, own sin-cos positions, timm blocks, per-patch pixel head."""

from __future__ import annotations

import torch
from torch import nn

from geomed_ssl.models.encoder import grid_pos_embed, init_mae_weights, make_blocks
from geomed_ssl.models.pos_embed import sincos_pos_embed


class MAEDecoder(nn.Module):
    """Maps encoder tokens of the visible patches (B, 1+K, E) to per-patch predictions (B, N, out_dim)."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        grid: tuple[int, ...],
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.grid = tuple(grid)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(self.grid, dim, cls_token=True)[None])  # (1, 1+N, d)
        self.blocks = make_blocks(dim, depth, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pred = nn.Linear(dim, out_dim)
        init_mae_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def pos_for(self, grid: tuple[int, ...], ref: torch.Tensor) -> torch.Tensor:
        """(1, 1+N, d) positions, CLS row first (zero)."""
        if tuple(grid) == self.grid:
            return self.pos_embed.to(ref.dtype)
        pos = grid_pos_embed(grid, self.dim, ref)  # (1, N, d)
        return torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """``latent`` (B, 1+K, E) CLS first, ``ids_restore`` (B, N) -> predictions (B, N, out_dim), CLS dropped."""
        x = self.embed(latent)  # (B, 1+K, d)
        b, n = ids_restore.shape
        masks = self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)  # (B, N-K, d)
        seq = torch.cat([x[:, 1:], masks], dim=1)  # (B, N, d) shuffled order
        seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, self.dim))  # (B, N, d) grid order
        x = torch.cat([x[:, :1], seq], dim=1) + self.pos_for(grid, x)  # (B, 1+N, d)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x[:, 1:]))  # (B, N, out_dim)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}
