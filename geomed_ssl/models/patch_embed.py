"""Patch embeddings: image (B, C, *S) -> tokens (B, T, D) plus the spatial token grid.

``plain`` is here; ``grouped``, ``spectral`` and ``wavelength`` live in :mod:`geomed_ssl.models.spectral`.
:func:`build_patch_embed` makes the one an :class:`EncoderConfig` names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geomed_ssl.errors import DataError
from geomed_ssl.models.spectral import GroupedPatchEmbed, SpectralPatchEmbed, WavelengthPatchEmbed
from geomed_ssl.models.tokens import token_grid


class PlainPatchEmbed(nn.Module):
    """One Conv2d/Conv3d over all bands with kernel = stride = patch (timm's ``patch_embed.proj`` layout)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, ...], spatial_dims: int) -> None:
        super().__init__()
        if len(patch_size) != spatial_dims or spatial_dims not in (2, 3):
            raise ValueError(f"patch_size {patch_size} does not fit spatial_dims={spatial_dims}.")
        self.in_chans = in_chans
        self.patch_size = tuple(patch_size)
        self.spatial_dims = spatial_dims
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def grid_for(self, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Token grid for an input of this spatial shape; raises DataError if the patch does not divide it."""
        return token_grid(spatial_shape, self.patch_size)

    def units(self, num_channels: int | None = None) -> list[list[int]]:
        """One spectral unit reading every band."""
        return [list(range(self.in_chans))]

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, C, *S) -> tokens (B, N, D) in row-major grid order, grid ``S // patch``."""
        if channel_ids is not None:
            raise DataError("a plain patch embedding reads exactly its training bands; band subsets need "
                            "model.embedding=spectral or wavelength.")
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_chans:
            raise DataError(
                f"expected images of shape (B, {self.in_chans}, {', '.join('S' * self.spatial_dims)}), got "
                f"{tuple(x.shape)}; the data's band count must match the encoder's in_chans."
            )
        grid = self.grid_for(tuple(x.shape[2:]))
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return tokens, grid


PATCH_EMBEDS: dict[str, type[nn.Module]] = {
    "plain": PlainPatchEmbed,
    "grouped": GroupedPatchEmbed,
    "spectral": SpectralPatchEmbed,
    "wavelength": WavelengthPatchEmbed,
}


def build_patch_embed(cfg: Any) -> nn.Module:
    """The patch embedding an ``EncoderConfig`` describes (kind, bands, groups, chunk, wavelengths)."""
    args = (cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.spatial_dims)
    if cfg.embedding == "grouped":
        return GroupedPatchEmbed(*args, groups=cfg.band_groups)
    if cfg.embedding == "spectral":
        return SpectralPatchEmbed(*args, chunk=cfg.spectral_chunk, channel_embed=cfg.channel_embed,
                                  wavelengths=cfg.wavelengths)
    if cfg.embedding == "wavelength":
        return WavelengthPatchEmbed(*args, wavelengths=cfg.wavelengths, bandwidths=cfg.bandwidths)
    return PlainPatchEmbed(*args)
