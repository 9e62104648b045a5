"""Pure helpers for masked image modelling: random token masking and patchify/unpatchify in 2D and 3D.

Patch values are laid out channel-last inside each patch (``n h w p q c`` in 2D, ``n d h w o p q c`` in 3D), the
ordering of HF ``ViTMAEForPreTraining.patchify``, for any number of bands.
"""

from __future__ import annotations

import math

import torch


def num_keep(num_tokens: int, mask_ratio: float) -> int:
    """Tokens kept visible: ``int(N * (1 - ratio))`` (truncation, as HF ViTMAE and the MAE paper), at least 1."""
    return max(1, int(num_tokens * (1 - mask_ratio)))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (low noise is kept).

    Args:
        tokens: (B, N, D).
        mask_ratio: fraction of tokens to drop.
        noise: optional (B, N) noise; the same noise gives the same mask. Drawn with ``torch.rand`` if None.

    Returns:
        kept (B, K, D) with K = ``num_keep(N, mask_ratio)``, in shuffle order;
        mask (B, N) float, 1 = masked, 0 = kept, in the original token order;
        ids_restore (B, N) long, the inverse permutation (to unshuffle the decoder's sequence).
    """
    b, n, d = tokens.shape
    keep = num_keep(n, mask_ratio)
    if noise is None:
        noise = torch.rand(b, n, device=tokens.device)
    noise = noise.to(tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, N) ascending: small noise kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N) rank of each token
    ids_keep = ids_shuffle[:, :keep]  # (B, K)
    kept = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))  # (B, K, D)
    mask = (ids_restore >= keep).to(tokens.dtype)  # (B, N)
    return kept, mask, ids_restore


def _grid(spatial: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    if len(spatial) != len(patch) or any(s % p for s, p in zip(spatial, patch)):
        raise ValueError(f"spatial shape {tuple(spatial)} is not a multiple of the patch size {tuple(patch)}.")
    return tuple(s // p for s, p in zip(spatial, patch))


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *S) -> (B, N, prod(patch) * C), channel-last inside each patch, tokens in row-major grid order."""
    b, c, *spatial = x.shape
    nd = len(spatial)
    grid = _grid(tuple(spatial), tuple(patch))
    split = [v for g, p in zip(grid, patch) for v in (g, p)]
    x = x.reshape(b, c, *split)  # (B, C, g0, p0, g1, p1, ...)
    perm = [0, *(2 + 2 * i for i in range(nd)), *(3 + 2 * i for i in range(nd)), 1]
    return x.permute(perm).reshape(b, math.prod(grid), math.prod(patch) * c)  # (B, N, P*C)


def unpatchify(
    patches: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...], channels: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, prod(patch) * C) -> (B, C, *(grid * patch))."""
    b, n, v = patches.shape
    nd = len(grid)
    if n != math.prod(grid):
        raise ValueError(f"{n} patches do not fill the grid {tuple(grid)}.")
    c = channels if channels is not None else v // math.prod(patch)
    if c * math.prod(patch) != v:
        raise ValueError(f"{v} values per patch do not split into patch {tuple(patch)} x {c} channels.")
    x = patches.reshape(b, *grid, *patch, c)  # (B, g0, g1, ..., p0, p1, ..., C)
    perm = [0, 1 + 2 * nd, *(j for i in range(nd) for j in (1 + i, 1 + nd + i))]
    return x.permute(perm).reshape(b, c, *(g * p for g, p in zip(grid, patch)))


def mask_to_image(mask: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """Token mask (B, N) -> spatial bool (B, *S), True where the token covering the pixel is masked."""
    values = mask.bool()[..., None].expand(-1, -1, math.prod(patch))  # (B, N, P)
    return unpatchify(values, patch, grid, 1)[:, 0]
