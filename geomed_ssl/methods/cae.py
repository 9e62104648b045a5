"""Context autoencoder, CAE (Chen et al., 2023), 2D and 3D, any band count (one token per position: plain or
wavelength embeddings).

The encoder sees only the visible tokens (as MAE). A latent contextual regressor (cross-attention blocks whose
queries are mask tokens at the masked positions, keys and values the visible latents and the queries) predicts the
representations of the masked tokens; they are aligned (MSE) with the encoder's own representations of the masked
tokens, computed by running the masked tokens alone through the encoder without gradient. A light decoder
then reconstructs the masked tokens' pixels (per-patch normalised over their valid pixels, nodata left out, as MAE)
from the regressed representations only, so the pretext work is done in the encoder's latent space and the decoder
cannot lean on visible tokens. The paper's decoder predicts DALL-E tokens with cross-entropy; here it predicts the
pixels (no tokenizer to download or train), and the cross-attention adds positions to keys and values alike.
Masking is random with a fixed count per window (the paper's blockwise masking varies the count per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from geomed_ssl.config import MAX_DEPTH, MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod
from geomed_ssl.methods.mae import NORM_PIX_EPS, patch_stats
from geomed_ssl.methods.masking import num_keep, patchify, random_masking, valid_values
from geomed_ssl.methods.mim import check_unit_free, global_mean, prepare_image, token_weights
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder, init_mae_weights, make_blocks


@dataclass
class CAESettings(MethodSettings):
    """The ``method:`` keys of ``name: cae``."""

    mask_ratio: float = setting(0.5, "fraction of each window's tokens hidden from the encoder", bounds="(0, 1)")
    regressor_depth: int = setting(2, "cross-attention blocks of the latent regressor", bounds=f"[1, {MAX_DEPTH}]")
    decoder_depth: int = setting(2, "decoder blocks (on the regressed masked tokens only)",
                                 bounds=f"[1, {MAX_DEPTH}]")
    align_weight: float = setting(2.0, "weight of the latent alignment loss against the reconstruction (paper: 2)",
                                  bounds=">= 0")
    norm_pix_loss: bool = setting(True, "reconstruction targets normalised per patch (mean 0, std 1)")

    def check(self, source: str, context: MethodContext) -> None:
        refusal = check_unit_free("cae", context, "its regressor queries one token per masked position")
        if refusal:
            raise ConfigError(f"{source}: {refusal}")
        if context.tokens is not None:
            kept = num_keep(context.tokens, self.mask_ratio)
            if not 0 < kept < context.tokens:
                raise ConfigError(f"{source}: method.mask_ratio {self.mask_ratio} keeps {kept} of the "
                                  f"{context.tokens} tokens per window; pick a ratio that keeps some and hides some.")


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: ``q`` (B, M, D) attends to ``kv`` (B, L, D), then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim, eps=norm_eps), nn.LayerNorm(dim, eps=norm_eps)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


@register_method
class CAE(SSLMethod):
    """Encoder on visible tokens, latent regressor to the masked tokens' representations (aligned with the
    encoder's own), decoder to their pixels."""

    name = "cae"
    card = MethodCard(
        learns="representations of hidden tokens predicted from visible ones in the encoder's own latent space, "
               "plus their pixels (every band) from those predictions",
        cost="~1.5x MAE (the encoder also runs, without gradient, on the masked tokens for the alignment target)",
        failure_modes="the alignment term alone can collapse (constant representations); it is held by the "
                      "reconstruction term, so keep align_weight moderate; grouped / spectral embeddings need "
                      "model.tokens_per_position=1 (one token per position)",
        recipes=("recipes/simmim_sentinel2.yaml",))
    Settings = CAESettings
    settings: CAESettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: CAESettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s, cfg = self.settings, encoder_cfg
        self.patch_size = tuple(cfg.patch_size)
        dim = cfg.embed_dim
        self.encoder = ViTEncoder(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.regressor = nn.ModuleList(CrossBlock(dim, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps)
                                       for _ in range(s.regressor_depth))
        self.regressor_norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.decoder = make_blocks(dim, s.decoder_depth, cfg.num_heads, cfg.mlp_ratio, True, cfg.norm_eps)
        self.decoder_norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.pixels = nn.Linear(dim, math.prod(self.patch_size) * cfg.in_chans)
        for module in (self.regressor, self.decoder, self.pixels):
            init_mae_weights(module)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None, noise: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """``image`` (B, C, *S) nodata zeroed, ``noise`` (B, N) -> ``loss``, ``recon_loss``, ``align_loss``."""
        enc = self.encoder
        tokens, grid = enc.embed(image)  # (B, N, D)
        b, n, d = tokens.shape
        kept, mask, ids_restore = random_masking(tokens, self.settings.mask_ratio, noise.to(image.device))
        k = kept.shape[1]
        ids_masked = torch.argsort(ids_restore, dim=1)[:, k:]  # (B, M) positions of the masked tokens
        latent, _ = enc.run_blocks(enc.add_cls(kept))  # (B, 1+K, D)
        pos = enc.pos_embed_for(grid, tokens).expand(b, -1, -1)  # (B, N, D)
        pos_m = torch.gather(pos, 1, ids_masked[..., None].expand(-1, -1, d))  # (B, M, D)
        pos_v = torch.gather(pos, 1, torch.argsort(ids_restore, dim=1)[:, :k, None].expand(-1, -1, d))  # (B, K, D)
        query = self.mask_token.to(tokens.dtype) + pos_m  # (B, M, D)
        visible = latent[:, 1:] + pos_v
        for blk in self.regressor:
            query = blk(query, torch.cat([visible, query], dim=1))
        predicted = self.regressor_norm(query)  # (B, M, D)
        with torch.no_grad():  # the encoder's own representation of the masked tokens: the alignment target
            hidden = torch.gather(tokens, 1, ids_masked[..., None].expand(-1, -1, d))
            target, _ = enc.run_blocks(enc.add_cls(hidden))
        weights = torch.gather(token_weights(mask, valid, self.patch_size), 1, ids_masked)  # (B, M)
        align = global_mean(((predicted - target[:, 1:]) ** 2).mean(dim=-1), weights, self.training)
        x = predicted + pos_m
        for blk in self.decoder:
            x = blk(x)
        pred = self.pixels(self.decoder_norm(x))  # (B, M, P*C)
        pix = patchify(image, self.patch_size)
        at_masked = ids_masked[..., None].expand(-1, -1, pix.shape[-1])
        pix = torch.gather(pix, 1, at_masked)  # (B, M, P*C)
        # a token's nodata values (zero-filled) are neither targets nor part of its normalisation, as in MAE
        values = None if valid is None else torch.gather(
            valid_values(valid.bool(), self.patch_size, 1, image.shape[1]), 1, at_masked)  # (B, M, P*C) bool
        if self.settings.norm_pix_loss:
            mean, var = patch_stats(pix, values)
            pix = (pix - mean) / (var + NORM_PIX_EPS) ** 0.5
        err = (pred - pix) ** 2
        per_token = err.mean(dim=-1) if values is None else \
            torch.where(values, err, 0.0).sum(dim=-1) / values.sum(dim=-1).clamp_min(1)
        recon = global_mean(per_token, weights, self.training)
        return {"loss": recon + self.settings.align_weight * align, "recon_loss": recon, "align_loss": align}

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        n = math.prod(w // p for w, p in zip(image.shape[2:], self.patch_size))
        noise = PerSample.from_batch(batch, generator).rand(n)  # (B, N): each sample's own masking
        out = self(image, valid, noise)
        return MethodOutput(loss=out["loss"], logs={"recon_loss": out["recon_loss"].detach(),
                                                    "align_loss": out["align_loss"].detach()})
