"""MAE's light decoder: the encoder's visible tokens plus mask tokens, its own sin-cos positions, timm blocks, and a
pixel head, for both token layouts of :mod:`geomed_ssl.methods.mae`:

- plain tokens (one per position holding every band): ``T = N`` tokens and one head of ``prod(patch) * C`` values,
  HF ``ViTMAEForPreTraining``'s decoder (``decoder.pred`` is its ``decoder_pred``);
- unit tokens (grouped / spectral: ``U`` per position, unit-major, ``T = U * N``): each token's position also gets
  its unit's embedding (the mean of the unit's rows of a learned table, or of a fixed wavelength sin-cos table), and
  each unit is predicted by its own head (grouped) or by one head shared by all (spectral): the pixels of the unit's
  own bands, channel-last and zero-padded to the largest unit (``cmax``). ``decoder.pred`` is then a list of heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.models.blocks import init_mae_weights, make_blocks
from geomed_ssl.models.pos_embed import grid_pos_embed, sincos_pos_embed


@dataclass(frozen=True)
class DecoderUnits:
    """The units of a unit-major token sequence as the decoder reads them (``U`` entries each)."""

    rows: list[list[int]]  # rows of the decoder's unit table averaged into each unit's embedding
    heads: list[int]  # the prediction head of each unit
    sizes: list[int]  # bands each unit predicts; predictions are zero-padded to the largest


class MAEDecoder(nn.Module):
    """Encoder tokens of the visible patches (B, 1+K, E) -> per-token pixel predictions (B, T, prod(patch) * c).

    ``head_channels``: the bands each head predicts (plain: ``[C]``). A unit table (``unit_rows`` learned rows, or a
    ``fixed_table`` (R, dim)) makes the decoder read unit-major tokens, see the module docstring.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, grid: tuple[int, ...], patch_numel: int,
                 head_channels: Sequence[int], mlp_ratio: float = 4.0, norm_eps: float = 1e-6, unit_rows: int = 0,
                 fixed_table: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dim, self.grid, self.patch_numel = dim, tuple(grid), patch_numel
        self.per_unit = bool(unit_rows) or fixed_table is not None
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(self.grid, dim, cls_token=True)[None])  # (1, 1+N, d)
        if fixed_table is not None:
            self.register_buffer("unit_table", fixed_table, persistent=False)  # (R, d)
        elif unit_rows:
            self.unit_embed = nn.Parameter(torch.zeros(unit_rows, dim))  # (R, d)
        self.blocks = make_blocks(dim, depth, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        heads = [nn.Linear(dim, patch_numel * c) for c in head_channels]
        self.pred = nn.ModuleList(heads) if self.per_unit else heads[0]
        init_mae_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)
        if hasattr(self, "unit_embed"):
            nn.init.normal_(self.unit_embed, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...],
                units: DecoderUnits | None = None) -> torch.Tensor:
        """``latent`` (B, 1+K, E) CLS first, ``ids_restore`` (B, T) -> predictions (B, T, P * c), CLS dropped;
        ``units`` None: plain tokens (T = N, c = C), else unit-major tokens (T = U * N, c = the largest unit's)."""
        x = self.embed(latent)  # (B, 1+K, d)
        b, t = ids_restore.shape
        masks = self.mask_token.to(x.dtype).expand(b, t + 1 - x.shape[1], -1)  # (B, T-K, d)
        seq = torch.cat([x[:, 1:], masks], dim=1)  # (B, T, d) shuffled order
        seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, self.dim))  # (B, T, d) token order
        x = torch.cat([x[:, :1], seq + self.positions(grid, units, x)], dim=1)  # (B, 1+T, d); the CLS position is 0
        for blk in self.blocks:
            x = blk(x)
        return self.predict(self.norm(x[:, 1:]), units)  # (B, T, P*c)

    def positions(self, grid: tuple[int, ...], units: DecoderUnits | None, ref: torch.Tensor) -> torch.Tensor:
        """(1, T, d): each token's spatial sin-cos (the buffer for the config's grid, else recomputed), plus its
        unit's embedding for unit-major tokens."""
        pos = self.pos_embed[:, 1:] if tuple(grid) == self.grid else grid_pos_embed(grid, self.dim, ref)  # (1, N, d)
        pos = pos.to(ref.dtype)
        if units is None:
            return pos
        unit = self.unit_embedding(units.rows).to(ref.dtype)  # (U, d)
        return (pos[:, None] + unit[None, :, None]).flatten(1, 2)  # (1, U*N, d) unit-major

    def unit_embedding(self, unit_rows: list[list[int]]) -> torch.Tensor:
        """(U, d): the mean of each unit's rows of the unit table."""
        table = self.unit_embed if hasattr(self, "unit_embed") else self.unit_table
        avg = torch.zeros(len(unit_rows), table.shape[0])
        for u, rows in enumerate(unit_rows):
            avg[u, rows] = 1.0 / len(rows)
        return avg.to(device=table.device, dtype=table.dtype) @ table

    def predict(self, h: torch.Tensor, units: DecoderUnits | None) -> torch.Tensor:
        """Decoded tokens (B, T, d) -> pixels (B, T, P * c): the one head (plain), else each unit's head, channel-last
        inside the patch and zero-padded to the largest unit's bands."""
        if units is None:
            return self.pred(h)  # (B, N, P*C)
        h = h.unflatten(1, (len(units.heads), -1))  # (B, U, N, d)
        cmax = max(units.sizes)
        if len(set(units.heads)) == 1:  # one shared head (spectral): all units at once
            out = self.pred[units.heads[0]](h).unflatten(-1, (self.patch_numel, -1))[..., :cmax]  # (B, U, N, P, cmax)
        else:
            parts = [self.pred[hd](h[:, i]).unflatten(-1, (self.patch_numel, -1)) for i, hd in enumerate(units.heads)]
            out = torch.stack([F.pad(o, (0, cmax - o.shape[-1])) for o in parts], dim=1)  # (B, U, N, P, cmax)
        return out.flatten(3).flatten(1, 2)  # (B, U*N, P*cmax)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"} | ({"unit_embed"} if hasattr(self, "unit_embed") else set())
