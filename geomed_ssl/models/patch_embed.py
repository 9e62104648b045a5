"""Patch embeddings: image (B, C, *S) -> tokens (B, N, D) plus the token grid."""

from __future__ import annotations

import torch
from torch import nn

from geomed_ssl.errors import DataError


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
        if len(spatial_shape) != self.spatial_dims or any(s % p for s, p in zip(spatial_shape, self.patch_size)):
            raise DataError(
                f"input of spatial shape {tuple(spatial_shape)} is not a {self.spatial_dims}D multiple of the patch "
                f"size {self.patch_size}; use windows whose sides are multiples of model.patch_size."
            )
        return tuple(s // p for s, p in zip(spatial_shape, self.patch_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, C, *S) -> tokens (B, N, D) in row-major grid order, grid ``S // patch``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_chans:
            raise DataError(
                f"expected images of shape (B, {self.in_chans}, {', '.join('S' * self.spatial_dims)}), got "
                f"{tuple(x.shape)}; the data's band count must match the encoder's in_chans."
            )
        grid = self.grid_for(tuple(x.shape[2:]))
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return tokens, grid


PATCH_EMBEDS: dict[str, type[nn.Module]] = {"plain": PlainPatchEmbed}
