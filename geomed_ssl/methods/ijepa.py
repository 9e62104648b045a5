"""I-JEPA (Assran et al., 2023): predict the representations of hidden blocks of an image from one visible context
block, in latent space; no pixels are reconstructed and no hand-made view augmentations are needed. 2D and 3D, any
band count (one token per position: plain or wavelength embeddings).

Per image (official ``MaskCollator``): ``num_targets`` target blocks of one size (drawn once per step from
``target_scale`` and ``aspect``, positions per image; blocks may overlap) and a context block (``context_scale``,
square) less every target token. The context encoder sees only the context tokens (their count trimmed, at random,
to the fewest of the global batch, so the batch stacks; the official code keeps the first ones). A narrow
predictor (the context's latents projected to ``predictor_dim`` plus fixed sin-cos positions, one mask token per
target position, run once per target block) predicts each target token's representation; the targets are the
momentum (EMA) encoder's final tokens on the whole image, layer-normed. Loss: smooth L1, averaged over the target
tokens (nodata tokens left out). Momentum: linear from ``momentum`` to 1 over the run (official). The momentum
encoder is exported (the paper evaluates the target encoder).

Differences from the official code: blocks are shaped like the grid (the official formula on square 2D grids, see
:func:`~geomed_ssl.methods.masking.jepa_block_sides`) and placed uniformly over every position (the official
``randint(0, H - h)`` never reaches the last row or column), and the context block may fill the grid (the official
one stays one token short of each side); a context that keeps fewer than a tenth of the grid is re-placed up to 20
times, then becomes every token outside the targets (the official collator relaxes the targets instead, so its
context may then overlap one). The view is one random resized crop as in the paper, with the flips and quarter
turns that ``augment:`` asks for (overhead imagery has no up; the paper flips nothing). Weight decay is
``train.weight_decay`` throughout (the paper's cosine from 0.04 to 0.4 is not applied) and the weights start from
the toolkit's MAE initialisation. The CLS token of this encoder runs with the context and with the target encoder's
tokens; the loss does not read it (``embed --pool auto`` takes the tokens' mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.config import MAX_DEPTH, MAX_HEADS, MethodConfig, check_heads, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod
from geomed_ssl.methods.distributed import all_reduce_max_
from geomed_ssl.methods.masking import jepa_block_sides, jepa_masks, largest_jepa_block
from geomed_ssl.methods.mim import check_unit_free, global_mean, prepare_image, token_weights
from geomed_ssl.methods.momentum import MomentumPair, momentum_copy
from geomed_ssl.methods.monitor import CollapseMonitor
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder, init_mae_weights, make_blocks
from geomed_ssl.models.pos_embed import axis_dims, check_sincos_dim, grid_pos_embed
from geomed_ssl.models.tokens import token_grid
from geomed_ssl.views.builder import ViewSpec


@dataclass
class IJEPASettings(MethodSettings):
    """The ``method:`` keys of ``name: ijepa`` (defaults: the official masking; a smaller predictor)."""

    num_targets: int = setting(4, "target blocks per image", bounds="[1, 16]")
    target_scale: list[float] = setting([0.15, 0.2], "fraction of the crop's tokens in each target block, "
                                        "[min, max]", bounds="(0, 1]", length=2)
    context_scale: list[float] = setting([0.85, 1.0], "fraction of the crop's tokens in the context block before "
                                         "the targets are taken out, [min, max]", bounds="(0, 1]", length=2)
    aspect: list[float] = setting([0.75, 1.5], "target blocks' aspect ratio (last two axes), [min, max]",
                                  bounds="> 0", length=2)
    predictor_dim: int | None = setting(None, "predictor width; null: half the encoder's, kept a valid sin-cos "
                                        "width (the official predictor is narrower than its encoder: 384 for "
                                        "ViT-H's 1280)", bounds=">= 4")
    predictor_depth: int = setting(4, "predictor transformer blocks (official: 12; a small encoder needs fewer)",
                                   bounds=f"[1, {MAX_DEPTH}]")
    predictor_num_heads: int = setting(4, "predictor attention heads (divide predictor_dim)",
                                       bounds=f"[1, {MAX_HEADS}]")
    momentum: float = setting(0.996, "target encoder EMA at step 0, linear to 1 at train.max_steps",
                              bounds="[0, 1]")

    def check(self, source: str, context: MethodContext) -> None:
        refusal = check_unit_free("ijepa", context, "its predictor queries one token per target position")
        if refusal:
            raise ConfigError(f"{source}: {refusal}")
        for key in ("target_scale", "context_scale", "aspect"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ConfigError(f"{source}: method.{key} must be [min, max] with min <= max, got {[lo, hi]}.")
        if self.predictor_dim is not None:
            check_heads(self.predictor_dim, self.predictor_num_heads, "method.predictor_dim",
                        "method.predictor_num_heads", source)
            if context.spatial_dims is not None:
                check_sincos_dim(self.predictor_dim, context.spatial_dims, f"{source}: method.predictor_dim")
        grid = context.crop_grid
        if grid is not None:
            most = largest_jepa_block(grid, self.target_scale, self.aspect)
            if self.num_targets * most >= math.prod(grid):
                raise ConfigError(
                    f"{source}: method ijepa's {self.num_targets} target blocks of up to {most} tokens can hide all "
                    f"{math.prod(grid)} tokens of a {'x'.join(map(str, grid))} token grid, leaving no context; use "
                    "more tokens per crop (a larger data.global_crop_size, or data.patch_size when that is null, "
                    "or a smaller model.patch_size), fewer method.num_targets or a smaller method.target_scale.")


def predictor_width(settings: IJEPASettings, cfg: EncoderConfig) -> int:
    """``method.predictor_dim``, or half the encoder's width rounded down to one that sin-cos positions and the
    heads accept (else the encoder's own width; a ConfigError when that fails too)."""
    if settings.predictor_dim is not None:
        return settings.predictor_dim
    heads = settings.predictor_num_heads
    for width in [*range(cfg.embed_dim // 2, 3, -1), cfg.embed_dim]:
        try:
            axis_dims(width, cfg.spatial_dims)
        except ValueError:
            continue
        if width % heads == 0:
            return width
    raise ConfigError(f"method ijepa: no predictor width up to the encoder's {cfg.embed_dim} splits into "
                      f"method.predictor_num_heads {heads} heads and {cfg.spatial_dims}D sin-cos positions; set "
                      "method.predictor_dim (a multiple of the heads and of 4) or fewer heads.")


class JEPAPredictor(nn.Module):
    """The narrow transformer that predicts target tokens' representations from the context's latents."""

    def __init__(self, dim: int, width: int, depth: int, num_heads: int, mlp_ratio: float, norm_eps: float) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = make_blocks(width, depth, num_heads, mlp_ratio, True, norm_eps)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Linear(width, dim)
        init_mae_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(self, context: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor,
                grid: tuple[int, ...]) -> torch.Tensor:
        """``context`` (B, K, D) latents at token positions ``context_ids`` (B, K); ``target_ids`` (B, T, M) ->
        predicted representations (B, T, M, D), each target block predicted from the context alone."""
        b, t, m = target_ids.shape
        k = context.shape[1]
        pos = grid_pos_embed(grid, self.width, context)[0]  # (N, W)
        x = self.embed(context) + pos[context_ids]  # (B, K, W)
        queries = self.mask_token.to(x.dtype) + pos[target_ids]  # (B, T, M, W)
        seq = torch.cat([x[:, None].expand(-1, t, -1, -1), queries], dim=2).reshape(b * t, k + m, self.width)
        for blk in self.blocks:
            seq = blk(seq)
        return self.proj(self.norm(seq[:, k:])).reshape(b, t, m, -1)


@register_method
class IJEPA(SSLMethod):
    """Context encoder on one block's tokens, predictor to the target blocks' representations, EMA target encoder."""

    name = "ijepa"
    card = MethodCard(
        learns="to predict, from one large visible block of the window, the momentum encoder's representations of "
               "several hidden blocks, in latent space (no pixels, no intensity augmentations)",
        cost="~1.3x MAE (ViT-Ti, benchmarks/bench_methods_step.py): the context encoder on about a third of the "
             "tokens with grad, the momentum encoder on every token without, a narrow predictor once per target block",
        failure_modes="representation collapse (every token the same) lets the loss fall to 0: watch "
                      "embedding_std / collapse in metrics.csv, keep momentum near 1; windows need enough tokens "
                      "for the blocks (refused otherwise); grouped / spectral embeddings need "
                      "model.tokens_per_position=1 (one token per position)",
        recipes=("recipes/ijepa_sentinel2.yaml",))
    Settings = IJEPASettings
    settings: IJEPASettings
    views = ViewSpec(intensity=False, scale=(0.3, 1.0))  # the official random resized crop; flips as augment: says

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: IJEPASettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s, cfg = self.settings, encoder_cfg
        self.patch_size = tuple(cfg.patch_size)
        self.encoder = ViTEncoder(cfg)
        self.target_encoder = momentum_copy(self.encoder)
        self.predictor = JEPAPredictor(cfg.embed_dim, predictor_width(s, cfg), s.predictor_depth,
                                       s.predictor_num_heads, cfg.mlp_ratio, cfg.norm_eps)
        self.monitor = CollapseMonitor("ijepa", advice="raise method.momentum towards 1 or lower train.base_lr")

    def momentum_pairs(self) -> list[MomentumPair]:
        return [(self.encoder, self.target_encoder)]

    def momentum(self, step: int) -> float:
        """Linear from ``method.momentum`` to 1 over the run (the official schedule)."""
        base = self.settings.momentum
        return base + (1.0 - base) * min(1.0, max(0.0, self.clock(step) / max(1, self.clock.total)))

    def export_encoder(self) -> ViTEncoder:
        """The target (momentum) encoder, which the paper evaluates."""
        return self.target_encoder

    def masks(self, batch: dict[str, Any], grid: tuple[int, ...], generator: torch.Generator,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The step's target blocks (B, T, M) and context token ids (B, K): block sizes from ``generator`` (one
        draw for the global batch), positions and the context's trim per sample; K is the global batch's fewest."""
        s = self.settings
        u = torch.rand(2, generator=generator, device=generator.device).tolist()
        target_sides = jepa_block_sides(grid, s.target_scale, s.aspect, u[0])
        context_sides = jepa_block_sides(grid, s.context_scale, (1.0, 1.0), u[1])
        samples = PerSample.from_batch(batch, generator)
        targets, context = jepa_masks(grid, target_sides, s.num_targets, context_sides,
                                      [samples.generator(i) for i in range(len(samples))])
        counts = context.sum(dim=1)  # (B,)
        fewest = -int(all_reduce_max_(-counts.min().reshape(1).float().to(device)).item())  # the global batch's
        if fewest == 0:  # every rank sees the same count, so every rank stops here
            raise ConfigError(f"method ijepa: the target blocks hid every token of a {'x'.join(map(str, grid))} "
                              "token grid; give it more tokens per crop (data.global_crop_size / data.patch_size, "
                              "model.patch_size) or fewer / smaller blocks (method.num_targets, method.target_scale).")
        noise = samples.rand(context.shape[1], stream=1) + (~context).float() * 2  # outside the context: never
        keep = noise.argsort(dim=1)[:, :fewest].sort(dim=1).values  # (B, K) each sample's trim, at random
        return targets, keep

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None, targets: torch.Tensor,
                context_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` (B, C, *S) nodata zeroed; ``targets`` (B, T, M) and ``context_ids`` (B, K) token indices ->
        ``loss`` and the context's mean latent ``z`` (B, D)."""
        enc = self.encoder
        tokens, grid = enc.embed(image)  # (B, N, D)
        d = tokens.shape[-1]
        context_ids, targets = context_ids.to(tokens.device), targets.to(tokens.device)
        visible = torch.gather(tokens, 1, context_ids[..., None].expand(-1, -1, d))  # (B, K, D)
        latent, _ = enc.run_blocks(enc.add_cls(visible))
        predicted = self.predictor(latent[:, 1:], context_ids, targets, grid)  # (B, T, M, D)
        with torch.no_grad():
            full = F.layer_norm(self.target_encoder(image)[:, 1:], (d,))  # (B, N, D) normed final tokens
            b, t, m = targets.shape
            wanted = torch.gather(full, 1, targets.reshape(b, t * m, 1).expand(-1, -1, d)).reshape(b, t, m, d)
        per_token = F.smooth_l1_loss(predicted.float(), wanted.float(), reduction="none").mean(dim=-1)  # fp32
        ok = token_weights(torch.ones(b, tokens.shape[1], device=tokens.device), valid, self.patch_size)  # (B, N)
        weights = torch.gather(ok, 1, targets.reshape(b, t * m)).reshape(b, t, m)
        loss = global_mean(per_token, weights, self.training)
        return {"loss": loss, "z": latent[:, 1:].mean(dim=1)}

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        grid = token_grid(image.shape[2:], self.patch_size)
        targets, context_ids = self.masks(batch, grid, generator, image.device)
        out = self(image, valid, targets, context_ids)
        return MethodOutput(out["loss"], {"jepa_loss": out["loss"].detach(), **self.monitor(out["z"], step)})
