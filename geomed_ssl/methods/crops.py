"""Batched crops at per-sample positions and per-crop standardisation: the shared pieces of the patch-based
pretext tasks (jigsaw tiles, context-prediction pairs), 2D and 3D, any band count."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def crop_at(x: torch.Tensor, starts: torch.Tensor, size: Sequence[int],
            index: torch.Tensor | None = None) -> torch.Tensor:
    """Crops of one size at per-crop corners, gathered in one indexing op.

    Args:
        x: (B, C, *S).
        starts: (M, nd) long, the first index of each crop on every spatial axis.
        size: the crop's side on every spatial axis (nd ints).
        index: (M,) long, the sample each crop is cut from; default ``arange(B)`` (then M == B).

    Returns:
        (M, C, *size).
    """
    b, _, *spatial = x.shape
    nd = len(spatial)
    starts = starts.to(device=x.device, dtype=torch.long)
    index = torch.arange(b, device=x.device) if index is None else index.to(device=x.device, dtype=torch.long)
    if starts.shape != (index.shape[0], nd) or len(size) != nd:
        raise ValueError(f"starts {tuple(starts.shape)} and size {tuple(size)} do not match {index.shape[0]} "
                         f"crops of a {nd}D batch.")
    if bool((starts < 0).any()) or any(bool((starts[:, a] + size[a] > spatial[a]).any()) for a in range(nd)):
        raise ValueError(f"a crop of {tuple(size)} leaves the {tuple(spatial)} window.")
    m = index.shape[0]
    view = [m] + [1] * nd  # broadcast shape of the batch index
    idx: list[torch.Tensor] = [index.reshape(view)]
    for a in range(nd):
        shape = [m] + [1] * nd
        shape[1 + a] = size[a]
        idx.append((starts[:, a, None] + torch.arange(size[a], device=x.device)).reshape(shape))
    out = x[(idx[0], slice(None), *idx[1:])]  # (M, *size, C): advanced indices split by a slice go first
    return out.movedim(-1, 1)


def standardize(x: torch.Tensor, spatial_dims: int = 2, eps: float = 1e-6,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Zero mean, unit std over the last ``spatial_dims`` axes, separately for every leading index (each crop's
    every band): (..., *S) -> same shape. With ``valid`` (bool, broadcastable to ``x``) the statistics are those of
    the valid pixels and the others are set to 0."""
    dims = tuple(range(-spatial_dims, 0))
    if valid is None:
        mean = x.mean(dim=dims, keepdim=True)
        std = x.var(dim=dims, keepdim=True, unbiased=False).add(eps).sqrt()
        return (x - mean) / std
    w = valid.to(x.dtype).expand_as(x)
    count = w.sum(dim=dims, keepdim=True).clamp_min(1)
    mean = (x * w).sum(dim=dims, keepdim=True) / count
    var = ((x - mean).square() * w).sum(dim=dims, keepdim=True) / count
    return (x - mean) / var.add(eps).sqrt() * w


def shared_valid(valid: torch.Tensor, dim: int) -> torch.Tensor:
    """The pixels valid in every crop along ``dim`` of a bool mask, kept as a size-1 axis: the one nodata pattern
    that pretext tasks give all their crops of a sample, so where the nodata lies (a scene's collar) cannot tell
    which crop is which."""
    return valid.all(dim=dim, keepdim=True)
