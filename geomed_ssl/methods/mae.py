"""Masked autoencoder (He et al. 2021) for any band count, 2D or 3D, with nodata pixels left out of the loss.

Numerically equal to HF ``ViTMAEForPreTraining`` given the same weights and noise (see the equivalence test):
same masking (argsort of noise, ``int(N * (1 - ratio))`` kept), same patch ordering, same loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from geomed_ssl.config import MethodConfig
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodOutput, SSLMethod
from geomed_ssl.methods.masking import mask_to_image, patchify, random_masking, unpatchify
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.mae_decoder import MAEDecoder
from geomed_ssl.models.pos_embed import axis_dims

NORM_PIX_EPS = 1e-6


@dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, N, prod(patch) * C) in the target's space (per-patch normalised if norm_pix_loss)
    mask: torch.Tensor  # (B, N) float, 1 = masked
    ids_restore: torch.Tensor  # (B, N)
    grid: tuple[int, ...]


class MAE(SSLMethod):
    """Encoder on the visible ~25% of patches, light decoder on all, MSE on the masked patches' pixels."""

    name = "mae"
    view_kind = "mae"

    def __init__(self, encoder_cfg: EncoderConfig, method_cfg: MethodConfig, max_steps: int) -> None:
        super().__init__(encoder_cfg, method_cfg, max_steps)
        m = method_cfg
        if m.decoder_embed_dim % m.decoder_num_heads:
            raise ConfigError(
                f"method.decoder_embed_dim ({m.decoder_embed_dim}) must be divisible by "
                f"method.decoder_num_heads ({m.decoder_num_heads})."
            )
        try:
            axis_dims(m.decoder_embed_dim, encoder_cfg.spatial_dims)
        except ValueError as err:
            raise ConfigError(f"method.decoder_embed_dim: {err}") from None
        if not 0.0 <= m.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in [0, 1), got {m.mask_ratio}.")
        self.mask_ratio = float(m.mask_ratio)
        self.norm_pix_loss = bool(m.norm_pix_loss)
        self.patch_size = tuple(encoder_cfg.patch_size)
        self.in_chans = encoder_cfg.in_chans
        self.encoder = ViTEncoder(encoder_cfg)
        self.decoder = MAEDecoder(
            in_dim=encoder_cfg.embed_dim,
            dim=m.decoder_embed_dim,
            depth=m.decoder_depth,
            num_heads=m.decoder_num_heads,
            out_dim=math.prod(self.patch_size) * encoder_cfg.in_chans,
            grid=encoder_cfg.grid,
            mlp_ratio=encoder_cfg.mlp_ratio,
            norm_eps=encoder_cfg.norm_eps,
        )

    def forward(
        self, image: torch.Tensor, valid: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        """``image`` (B, C, *S), ``valid`` (B, *S) bool or None, ``noise`` (B, N) or None -> MAEOutput."""
        if valid is not None:
            valid = valid.bool()
            image = torch.where(valid[:, None], image, 0.0)  # nodata never reaches the encoder
        tokens, grid = self.encoder.embed(image)  # (B, N, D)
        kept, mask, ids_restore = random_masking(tokens, self.mask_ratio, noise)  # (B, K, D), (B, N), (B, N)
        latent, _ = self.encoder.run_blocks(self.encoder.add_cls(kept))  # (B, 1+K, D)
        pred = self.decoder(latent, ids_restore, grid)  # (B, N, P*C)
        loss = self.loss(image, pred, mask, valid)
        return MAEOutput(loss=loss, pred=pred, mask=mask, ids_restore=ids_restore, grid=grid)

    def _pixel_weights(self, image: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """(B, N, P*C) bool, True on valid pixels; None when every pixel is valid, so an all-valid batch gets the
        paper's loss bit for bit (the check costs one host sync)."""
        if valid is None or bool(valid.all()):
            return None
        return patchify(valid[:, None].expand_as(image), self.patch_size)

    @staticmethod
    def _patch_stats(target: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch mean and unbiased variance (B, N, 1), over valid values only when ``weights`` is given."""
        if weights is None:
            return target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        count = weights.sum(dim=-1, keepdim=True).to(target.dtype)  # (B, N, 1)
        mean = torch.where(weights, target, 0.0).sum(dim=-1, keepdim=True) / count.clamp_min(1)
        sq = torch.where(weights, (target - mean) ** 2, 0.0).sum(dim=-1, keepdim=True)
        return mean, sq / (count - 1).clamp_min(1)

    def loss(
        self, image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE on masked patches, per-patch normalised targets if ``norm_pix_loss``, nodata pixels left out."""
        target = patchify(image, self.patch_size)  # (B, N, P*C)
        weights = self._pixel_weights(image, valid)
        if self.norm_pix_loss:
            mean, var = self._patch_stats(target, weights)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        err = (pred - target) ** 2  # (B, N, P*C)
        if weights is None:
            per_patch = err.mean(dim=-1)  # (B, N)
            return (per_patch * mask).sum() / mask.sum()
        per_patch = torch.where(weights, err, 0.0).sum(dim=-1)  # (B, N)
        count = weights.sum(dim=-1).to(err.dtype)  # (B, N) valid values per patch
        return (per_patch * mask).sum() / (count * mask).sum().clamp_min(1)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        """One step's loss; the masking noise is drawn from ``generator`` (on its device) then moved."""
        image, valid = batch["image"], batch.get("valid")
        grid = self.encoder.patch_embed.grid_for(tuple(image.shape[2:]))
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.rand(image.shape[0], math.prod(grid), generator=generator, device=gen_device)
        out = self(image, valid, noise.to(image.device))
        logs = {"recon_loss": out.loss.detach()}
        if valid is not None:
            logs["valid_fraction"] = valid.float().mean()
        return MethodOutput(loss=out.loss, logs=logs)

    @torch.no_grad()
    def reconstruct(
        self, image: torch.Tensor, valid: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """For previews, in eval mode: ``pred_image`` (B, C, *S) in the input's normalised space (norm_pix undone
        with each target patch's mean/var), ``mask_image`` (B, *S) bool True where masked, ``loss`` scalar."""
        was_training = self.training
        self.eval()
        try:
            out = self(image, valid, noise)
        finally:
            self.train(was_training)
        pred = out.pred
        if self.norm_pix_loss:
            valid = None if valid is None else valid.bool()
            clean = image if valid is None else torch.where(valid[:, None], image, 0.0)
            target = patchify(clean, self.patch_size)
            mean, var = self._patch_stats(target, self._pixel_weights(clean, valid))
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        return {
            "pred_image": unpatchify(pred, self.patch_size, out.grid, self.in_chans),
            "mask_image": mask_to_image(out.mask, self.patch_size, out.grid),
            "loss": out.loss,
        }

    def export_encoder(self) -> ViTEncoder:
        return self.encoder
