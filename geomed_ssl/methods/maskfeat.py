"""MaskFeat (Wei et al., 2022): predict the histograms of oriented gradients of masked tokens, 2D and 3D, any band
count.

The encoder runs on every token, masked positions replaced by a learned mask token (as SimMIM / BEiT); a linear
head regresses each masked token's HOG (:func:`~geomed_ssl.methods.hog.hog_targets`: 2 x 2 cells per token side of
``orientations`` bins in 2D, 10 icosahedral axes per cell in 3D, L2-normalised per token and band group, where the
official code normalises each cell; gradients that read nodata vote nothing); the loss is the mean squared error over
masked tokens (nodata-heavy tokens left out). Masking is blockwise (BEiT's boxes),
as in the paper.

Bands: HOG of every band up to ``hog_max_groups`` bands (an edge seen only in NIR or SWIR is what a multispectral
encoder should learn to place), above that HOG of the mean band of ``hog_max_groups`` contiguous groups (adjacent
hyperspectral bands are near duplicates, and the target would grow with the band count). Gradients are per voxel:
volumes are resampled to ``data.spacing`` before training, so bins follow the grid of that spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod
from geomed_ssl.methods.hog import contiguous_band_groups, default_cell, hog_target_dim, hog_targets
from geomed_ssl.methods.mim import (MaskToken, block_masks, encode_masked, global_mean, prepare_image,
                                    token_weights)
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


@dataclass
class MaskFeatSettings(MethodSettings):
    """The ``method:`` keys of ``name: maskfeat``."""

    mask_ratio: float = setting(0.4, "fraction of the tokens hidden (blockwise boxes)", bounds="(0, 1)")
    hog_orientations: int = setting(9, "2D: orientation bins over [0, 180) degrees per cell (3D always uses the 10 "
                                    "icosahedral axes)", bounds="[2, 36]")
    hog_cell: int | None = setting(None, "HOG cell side in pixels / voxels, dividing model.patch_size; null: half "
                                   "the token side (2 cells per side) where it is even, else the token",
                                   bounds=">= 1")
    hog_max_groups: int = setting(16, "HOG of every band up to this many bands; above, of the mean band of this "
                                  "many contiguous band groups", bounds="[1, 256]")

    def check(self, source: str, context: MethodContext) -> None:
        if context.patch is not None and self.hog_cell is not None and any(p % self.hog_cell for p in context.patch):
            raise ConfigError(f"{source}: method.hog_cell {self.hog_cell} must divide model.patch_size "
                              f"{context.patch} (e.g. {default_cell(context.patch)[0]}).")
        if context.tokens is not None and round(self.mask_ratio * context.tokens) < 1:
            raise ConfigError(f"{source}: method.mask_ratio {self.mask_ratio} hides no token of the "
                              f"{context.tokens} per window; raise it.")


@register_method
class MaskFeat(SSLMethod):
    """Mask tokens in the encoder, a linear head to each masked token's HOG, MSE on masked tokens."""

    name = "maskfeat"
    card = MethodCard(
        learns="where edges and textures lie, and in which bands, under blockwise-hidden regions (HOG targets: "
               "local gradient statistics, insensitive to brightness)",
        cost="~1.7x MAE (benchmarks/bench_methods_step.py; encoder on every token, HOG targets from a few "
             "convolutions)",
        failure_modes="flat, textureless data (smooth CT soft tissue, open water) give near-empty histograms and "
                      "little to learn; spectra are not a target, so pair it with a spectral method for them",
        recipes=("recipes/simmim_sentinel2.yaml",))
    Settings = MaskFeatSettings
    settings: MaskFeatSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: MaskFeatSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.patch_size = tuple(encoder_cfg.patch_size)
        nd = len(self.patch_size)
        self.cell = default_cell(self.patch_size) if s.hog_cell is None else (s.hog_cell,) * nd
        self.orientations = s.hog_orientations if nd == 2 else None
        c = encoder_cfg.in_chans
        self.band_groups = None if c <= s.hog_max_groups else contiguous_band_groups(c, s.hog_max_groups)
        groups = c if self.band_groups is None else len(self.band_groups)
        self.target_dim = hog_target_dim(self.patch_size, self.cell, groups, self.orientations)
        self.encoder = ViTEncoder(encoder_cfg)
        self.mask_token = MaskToken(encoder_cfg.embed_dim)
        self.head = nn.Linear(encoder_cfg.embed_dim, self.target_dim)

    def targets(self, image: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *S) -> (B, N, target_dim) HOG per token, float32, no gradient; gradients that read nodata
        (``valid`` (B, *S) False) vote nothing."""
        with torch.no_grad():
            return hog_targets(image.float(), self.patch_size, self.cell, self.orientations, self.band_groups,
                               valid=valid)

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """``image`` (B, C, *S) nodata zeroed, ``mask`` (B, N) float -> the loss."""
        mask = mask.to(image.device)
        tokens, _, _ = encode_masked(self.encoder, self.mask_token, image, mask)  # (B, N, D)
        err = ((self.head(tokens).float() - self.targets(image, valid)) ** 2).mean(dim=-1)  # (B, N)
        return global_mean(err, token_weights(mask, valid, self.patch_size), self.training)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        grid = tuple(w // p for w, p in zip(image.shape[2:], self.patch_size))
        mask = block_masks(PerSample.from_batch(batch, generator), grid, self.settings.mask_ratio)
        loss = self(image, valid, mask)
        return MethodOutput(loss=loss, logs={"hog_loss": loss.detach(), "masked_fraction": mask.mean()})

