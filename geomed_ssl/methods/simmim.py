"""SimMIM (Xie et al., 2022): its masking, loss and the registered method ``simmim``, 2D and 3D, any band count.

SimMIM masks square (cubic) *mask patches* larger than the tokens (32 px over 4 px tokens in the paper's Swin
setting), so a masked region cannot be filled in by copying the neighbouring token; every token inside a masked
mask patch is masked. The loss is L1 on the masked pixels only, in the input's normalised space (the per-band
standardisation the reader applies; SimMIM reconstructs the normalised image, not per-patch normalised pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import (MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod,
                                     mean_over_ranks)
from geomed_ssl.methods.masking import mask_to_image, patchify, unpatchify
from geomed_ssl.methods.mim import MaskToken, encode_masked, prepare_image
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def mask_patch_grid(window: Sequence[int], token_patch: Sequence[int], mask_patch: int | Sequence[int]
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check a mask-patch size against the window and token patch; returns (mask grid, tokens per mask patch
    per axis). Raises :class:`ConfigError` (one line) if it is not a multiple of the token patch or does not divide
    the window."""
    nd = len(window)
    mp = (int(mask_patch),) * nd if isinstance(mask_patch, int) else tuple(int(v) for v in mask_patch)
    if len(mp) != nd or len(token_patch) != nd:
        raise ConfigError(f"mask_patch_size {mask_patch} and token patch {tuple(token_patch)} must give one size per "
                          f"axis of the {nd}D window {tuple(window)}.")
    if any(m < t or m % t for m, t in zip(mp, token_patch)):
        raise ConfigError(f"mask_patch_size {mp} is not a multiple of the token patch {tuple(token_patch)}; use e.g. "
                          f"{tuple(t * max(1, m // t) for m, t in zip(mp, token_patch))}.")
    if any(w % m for w, m in zip(window, mp)):
        raise ConfigError(f"mask_patch_size {mp} does not divide the window {tuple(window)}; use a size that divides "
                          "it (or change the window).")
    return tuple(w // m for w, m in zip(window, mp)), tuple(m // t for m, t in zip(mp, token_patch))


def simmim_mask(noise: torch.Tensor, window: Sequence[int], token_patch: Sequence[int],
                mask_patch: int | Sequence[int], mask_ratio: float) -> torch.Tensor:
    """Per-sample random masking of whole mask patches, expanded to tokens: (B, N) float, 1 = masked.

    ``ceil(M * mask_ratio)`` of the M mask patches are masked in every sample (SimMIM's ``MaskGenerator``), those
    with the lowest ``noise`` (B, M) (uniform draws, e.g. each sample's own from :class:`PerSample`); N is the
    token count of ``window // token_patch`` in :func:`~geomed_ssl.methods.masking.patchify`'s row-major order.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
    grid, scale = mask_patch_grid(window, token_patch, mask_patch)
    m = math.prod(grid)
    if noise.ndim != 2 or noise.shape[1] != m:
        raise ValueError(f"noise {tuple(noise.shape)} must hold one value per mask patch: (B, {m}).")
    batch = noise.shape[0]
    count = min(m - 1, max(1, math.ceil(m * mask_ratio)))  # at least one masked and one visible mask patch
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, M)
    mask = (ranks < count).float().reshape(batch, *grid)  # (B, *mask_grid)
    for axis, s in enumerate(scale):
        mask = mask.repeat_interleave(s, dim=1 + axis)  # (B, *token_grid) after the last axis
    return mask.reshape(batch, -1)


def default_mask_patch(window: Sequence[int], token_patch: Sequence[int]) -> tuple[int, ...]:
    """SimMIM's mask patch when none is set: two tokens per side (32 px over 16 px ViT tokens in the paper) where
    that divides the window, else one token."""
    two = tuple(2 * t for t in token_patch)
    return two if all(w % m == 0 for w, m in zip(window, two)) else tuple(token_patch)


def simmim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                valid: torch.Tensor | None = None, over_ranks: bool = False) -> torch.Tensor:
    """SimMIM's masked L1: the sum of |pred - target| over masked pixels and bands divided by
    (masked pixels x bands), i.e. the mean absolute error over every masked value.

    Args:
        pred: (B, N, P*C) predicted patches, :func:`~geomed_ssl.methods.masking.patchify` layout.
        target: (B, N, P*C) the input's normalised pixels, patchified the same way.
        mask: (B, N), 1 = masked token.
        valid: optional (B, N, P*C) bool, False on nodata values, which are left out of sum and count.
        over_ranks: the count averaged over DDP ranks (training), so the ranks' mean is the global batch's loss.
    """
    err = (pred - target).abs()  # (B, N, P*C)
    weight = mask[..., None].to(err.dtype).expand_as(err)  # (B, N, P*C)
    if valid is not None:
        weight = weight * valid.to(err.dtype)
    count = mean_over_ranks(weight.sum()) if over_ranks else weight.sum()
    return (err * weight).sum() / count.clamp_min(1e-5)


@dataclass
class SimMIMSettings(MethodSettings):
    """The ``method:`` keys of ``name: simmim``."""

    mask_ratio: float = setting(0.6, "fraction of the mask patches hidden (rounded up)", bounds="(0, 1)")
    mask_patch_size: int | None = setting(None, "side of a mask patch in pixels / voxels, a multiple of "
                                          "model.patch_size that divides the window; null: two tokens where that "
                                          "divides the window, else one", bounds=">= 1")

    def mask_patch(self, context: MethodContext) -> tuple[int, ...]:
        """The mask patch per axis for ``context``'s window and token patch."""
        if self.mask_patch_size is None:
            return default_mask_patch(context.window, context.patch)
        return (self.mask_patch_size,) * len(context.window)

    def check(self, source: str, context: MethodContext) -> None:
        if context.window is None or context.patch is None:
            return
        try:
            grid, _ = mask_patch_grid(context.window, context.patch, self.mask_patch(context))
        except ConfigError as err:
            raise ConfigError(f"{source}: method.{err}") from None
        if math.prod(grid) < 2:
            raise ConfigError(f"{source}: method.mask_patch_size {self.mask_patch_size} leaves one mask patch in the "
                              f"{context.window} window, so nothing can be both hidden and seen; use a smaller one.")


@register_method
class SimMIM(SSLMethod):
    """Mask tokens through the encoder at their positions, a linear head to the raw (normalised) pixels, L1 on the
    masked pixels only."""

    name = "simmim"
    card = MethodCard(
        learns="to fill in hidden mask patches (several tokens each) from the rest, every band of every pixel, "
               "with the mask tokens inside the encoder",
        cost="~1.3x MAE (the encoder sees every token; the head is one linear layer)",
        failure_modes="small mask patches are filled in by interpolation (keep them >= 2 tokens); like MAE, "
                      "its features want fine-tuning more than a linear probe",
        recipes=("recipes/simmim_sentinel2.yaml",))
    Settings = SimMIMSettings
    settings: SimMIMSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: SimMIMSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        self.patch_size = tuple(encoder_cfg.patch_size)
        self.in_chans = encoder_cfg.in_chans
        self.encoder = ViTEncoder(encoder_cfg)
        self.mask_token = MaskToken(encoder_cfg.embed_dim)
        self.head = nn.Linear(encoder_cfg.embed_dim, math.prod(self.patch_size) * self.in_chans)

    def mask_patch(self, window: tuple[int, ...]) -> tuple[int, ...]:
        return self.settings.mask_patch(MethodContext(window=window, patch=self.patch_size))

    def masks(self, batch: dict[str, Any], window: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """(B, N) float, each sample's mask from its own stream."""
        grid, _ = mask_patch_grid(window, self.patch_size, self.mask_patch(window))
        noise = PerSample.from_batch(batch, generator).rand(math.prod(grid))  # (B, M)
        return simmim_mask(noise, window, self.patch_size, self.mask_patch(window), self.settings.mask_ratio)

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (B, C, *S) (nodata zeroed), ``mask`` (B, N) -> loss, predictions (B, N, P*C)."""
        tokens, _, _ = encode_masked(self.encoder, self.mask_token, image, mask.to(image.device))
        pred = self.head(tokens)  # (B, N, P*C)
        pix_valid = None if valid is None else patchify(valid[:, None].expand_as(image), self.patch_size)
        loss = simmim_loss(pred, patchify(image, self.patch_size), mask.to(pred.device), pix_valid,
                           over_ranks=self.training)
        return loss, pred

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        mask = self.masks(batch, tuple(image.shape[2:]), generator)
        loss, _ = self(image, valid, mask)
        logs = {"recon_loss": loss.detach(), "masked_fraction": mask.mean()}
        return MethodOutput(loss=loss, logs=logs)

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor, valid: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Previews: masked pixels predicted, visible ones as given; ``noise`` (B, M) per mask patch, (B, N) per
        token (as for MAE: each mask patch takes its tokens' mean) or None."""
        was_training = self.training
        self.eval()
        try:
            window = tuple(image.shape[2:])
            grid, scale = mask_patch_grid(window, self.patch_size, self.mask_patch(window))
            noise = torch.rand(image.shape[0], math.prod(grid)) if noise is None else noise.cpu()
            if noise.shape[1] != math.prod(grid) and noise.shape[1] == math.prod(grid) * math.prod(scale):
                split = [v for g, s in zip(grid, scale) for v in (g, s)]  # token grid as (mask grid, within) pairs
                blocks = noise.reshape(noise.shape[0], *split)
                noise = blocks.mean(dim=tuple(range(2, 2 + 2 * len(grid), 2))).reshape(noise.shape[0], -1)
            mask = simmim_mask(noise, window, self.patch_size, self.mask_patch(window), self.settings.mask_ratio)
            clean, valid = prepare_image({"image": image, "valid": valid})
            loss, pred = self(clean, valid, mask.to(image.device))
            tgrid = tuple(w // p for w, p in zip(window, self.patch_size))
            return {"pred_image": unpatchify(pred, self.patch_size, tgrid, self.in_chans),
                    "mask_image": mask_to_image(mask.to(image.device), self.patch_size, tgrid), "loss": loss}
        finally:
            self.train(was_training)
