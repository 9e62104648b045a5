"""The ViT encoder: patch embedding + fixed sin-cos positions + CLS token + timm ``Block``s, 2D or 3D.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i``, ``norm``) so a timm-compatible export is a plain state-dict copy.

Position embeddings are fixed sin-cos built for ``cfg.img_size``'s grid (the ``pos_embed`` buffer, with a zero
CLS row like MAE/timm). Inputs of another size get the sin-cos embedding *recomputed* for their grid rather than
interpolated: token ``k`` keeps position ``k`` at the same patch spacing, which is what a larger window at the same
resolution means (``pos_embed.interpolate_pos_embed`` is there for learned embeddings).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from geomed_ssl.config import DataConfig, ModelConfig, as_tuple, spatial_dims
from geomed_ssl.errors import ConfigError
from geomed_ssl.models.patch_embed import PATCH_EMBEDS
from geomed_ssl.models.pos_embed import axis_dims, sincos_pos_embed


@dataclass
class EncoderConfig:
    """Everything needed to rebuild the encoder; JSON-safe through ``to_dict`` / ``from_dict``."""

    in_chans: int
    spatial_dims: int = 2
    img_size: tuple[int, ...] = (64, 64)
    patch_size: tuple[int, ...] = (8, 8)
    embedding: str = "plain"
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    band_names: list[str] = field(default_factory=list)
    wavelengths: list[float | None] | None = None
    stats: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"encoder spatial_dims must be 2 (rasters) or 3 (volumes), got {self.spatial_dims}.")
        self.img_size = as_tuple(self.img_size, self.spatial_dims, "img_size")
        self.patch_size = as_tuple(self.patch_size, self.spatial_dims, "model.patch_size")
        self.band_names = list(self.band_names or [])
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the key when the config cannot build an encoder."""
        if self.in_chans <= 0:
            raise ConfigError(f"encoder in_chans must be positive, got {self.in_chans}.")
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ConfigError(
                f"data.patch_size {list(self.img_size)} is not a multiple of model.patch_size {list(self.patch_size)}."
            )
        if self.embedding not in PATCH_EMBEDS:
            raise ConfigError(f"model.embedding '{self.embedding}' is unknown; available: {', '.join(PATCH_EMBEDS)}.")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads ({self.num_heads})."
            )
        try:
            axis_dims(self.embed_dim, self.spatial_dims)
        except ValueError as err:
            raise ConfigError(f"model.embed_dim: {err}") from None
        if self.band_names and len(self.band_names) != self.in_chans:
            raise ConfigError(f"band_names lists {len(self.band_names)} bands but in_chans is {self.in_chans}.")
        if self.wavelengths is not None and len(self.wavelengths) != self.in_chans:
            raise ConfigError(f"wavelengths lists {len(self.wavelengths)} values but in_chans is {self.in_chans}.")

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of an ``img_size`` input."""
        return tuple(s // p for s, p in zip(self.img_size, self.patch_size))

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["img_size"], out["patch_size"] = list(self.img_size), list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of ``to_dict``; unknown keys are a ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"encoder config: unknown key '{unknown[0]}'. Valid keys: {', '.join(sorted(names))}.")
        return cls(**data)

    @classmethod
    def from_recipe(
        cls,
        model: ModelConfig,
        data: DataConfig,
        in_chans: int,
        band_names: list[str] | None = None,
        wavelengths: list[float | None] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> EncoderConfig:
        """Build from the recipe's ``model`` and ``data`` sections plus what the catalog found."""
        nd = spatial_dims(data)
        return cls(
            in_chans=in_chans,
            spatial_dims=nd,
            img_size=as_tuple(data.patch_size, nd, "data.patch_size"),
            patch_size=as_tuple(model.patch_size, nd, "model.patch_size"),
            embedding=model.embedding,
            embed_dim=model.embed_dim,
            depth=model.depth,
            num_heads=model.num_heads,
            mlp_ratio=model.mlp_ratio,
            qkv_bias=model.qkv_bias,
            drop_path=model.drop_path,
            band_names=list(band_names or []),
            wavelengths=None if wavelengths is None else list(wavelengths),
            stats=stats,
        )


@lru_cache(maxsize=32)
def _cached_sincos(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    return sincos_pos_embed(grid, dim)  # (N, D) float32, CPU; treat as read-only


def grid_pos_embed(grid: tuple[int, ...], dim: int, ref: torch.Tensor) -> torch.Tensor:
    """``(1, N, D)`` sin-cos positions for ``grid`` on ``ref``'s device and dtype (recomputed, cached on CPU)."""
    return _cached_sincos(tuple(grid), dim).to(device=ref.device, dtype=ref.dtype)[None]


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


class ViTEncoder(nn.Module):
    """ViT over 2D or 3D token grids; any band count, window and patch size."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PATCH_EMBEDS[cfg.embedding](cfg.in_chans, dim, cfg.patch_size, cfg.spatial_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(cfg.grid, dim, cls_token=True)[None])  # (1, 1+N, D)
        self.blocks = make_blocks(dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps,
                                  cfg.drop_path)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE init: xavier linears, patch-embed weight xavier on its (D, C*prod(patch)) view, cls normal(.02)."""
        init_mae_weights(self)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def config(self) -> EncoderConfig:
        """The encoder's config: bands, wavelengths, normalisation statistics, patch size, architecture."""
        return self.cfg

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def pos_embed_for(self, grid: tuple[int, ...], ref: torch.Tensor) -> torch.Tensor:
        """``(1, N, D)`` spatial positions for ``grid`` (the buffer for the config's grid, else recomputed)."""
        if tuple(grid) == self.cfg.grid:
            return self.pos_embed[:, 1:].to(ref.dtype)
        return grid_pos_embed(grid, self.embed_dim, ref)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, C, *S) -> tokens (B, N, D) with positions added, and the grid."""
        tokens, grid = self.patch_embed(x)  # (B, N, D)
        return tokens + self.pos_embed_for(grid, tokens), grid

    def add_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the CLS token (plus its zero position): (B, N, D) -> (B, 1+N, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _layer_ids(self, layers: list[int] | tuple[int, ...] | None) -> list[int]:
        depth = len(self.blocks)
        ids = []
        for i in layers or []:
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ConfigError(f"encoder layer {i} does not exist; the encoder has {depth} blocks (0..{depth - 1}).")
            ids.append(j)
        return ids

    def run_blocks(
        self, tokens: torch.Tensor, layers: list[int] | tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run all blocks on (B, T, D): the normed final tokens and the raw outputs of the chosen 0-based blocks
        (negative indices count from the end), in the order asked."""
        ids = self._layer_ids(layers)
        saved: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in ids:
                saved[i] = tokens
        return self.norm(tokens), [saved[i] for i in ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *S) -> normed tokens (B, 1+N, D), CLS first."""
        tokens, _ = self.embed(x)
        out, _ = self.run_blocks(self.add_cls(tokens))
        return out

    def forward_features(
        self, x: torch.Tensor, layers: list[int] | tuple[int, ...]
    ) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        """Spatial tokens (B, N, D) of the chosen blocks (raw block outputs, CLS dropped) and the token grid.
        Blocks after the last one asked for are not run."""
        ids = self._layer_ids(layers)
        tokens, grid = self.embed(x)
        tokens = self.add_cls(tokens)  # (B, 1+N, D)
        saved: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(ids, default=-1) + 1]):
            tokens = blk(tokens)
            if i in ids:
                saved[i] = tokens[:, 1:]
        return [saved[i] for i in ids], grid

    def no_weight_decay(self) -> set[str]:
        """Names the optimiser should not decay (norms and biases are caught by ndim <= 1 in the trainer)."""
        return {"pos_embed", "cls_token"}
