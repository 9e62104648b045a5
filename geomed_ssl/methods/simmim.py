"""SimMIM's masking and loss (Xie et al., 2022), 2D and 3D, any band count.

SimMIM masks square (cubic) *mask patches* larger than the tokens (32 px over 4 px tokens in the paper's Swin
setting), so a masked region cannot be filled in by copying the neighbouring token; every token inside a masked
mask patch is masked. The loss is L1 on the masked pixels only, in the input's normalised space (the per-band
standardisation the reader applies; SimMIM reconstructs the normalised image, not per-patch normalised pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from geomed_ssl.errors import ConfigError


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


def simmim_mask(batch: int, window: Sequence[int], token_patch: Sequence[int], mask_patch: int | Sequence[int],
                mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random masking of whole mask patches, expanded to tokens: (B, N) float, 1 = masked.

    ``ceil(M * mask_ratio)`` of the M mask patches are masked in every sample (SimMIM's ``MaskGenerator``), chosen by
    noise drawn from ``generator`` (on its device); N is the token count of ``window // token_patch`` in
    :func:`~geomed_ssl.methods.masking.patchify`'s row-major order.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
    grid, scale = mask_patch_grid(window, token_patch, mask_patch)
    m = math.prod(grid)
    count = min(m - 1, max(1, math.ceil(m * mask_ratio)))  # at least one masked and one visible mask patch
    noise = torch.rand(batch, m, generator=generator, device=generator.device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, M)
    mask = (ranks < count).float().reshape(batch, *grid)  # (B, *mask_grid)
    for axis, s in enumerate(scale):
        mask = mask.repeat_interleave(s, dim=1 + axis)  # (B, *token_grid) after the last axis
    return mask.reshape(batch, -1)


def simmim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """SimMIM's masked L1: the sum of |pred - target| over masked pixels and bands divided by
    (masked pixels x bands), i.e. the mean absolute error over every masked value.

    Args:
        pred: (B, N, P*C) predicted patches, :func:`~geomed_ssl.methods.masking.patchify` layout.
        target: (B, N, P*C) the input's normalised pixels, patchified the same way.
        mask: (B, N), 1 = masked token.
        valid: optional (B, N, P*C) bool, False on nodata values, which are left out of sum and count.
    """
    err = (pred - target).abs()  # (B, N, P*C)
    weight = mask[..., None].to(err.dtype).expand_as(err)  # (B, N, P*C)
    if valid is not None:
        weight = weight * valid.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp_min(1e-5)
