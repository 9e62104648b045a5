"""Fixed sin-cos position embeddings for 2D and 3D token grids, and interpolation between grids.

The 2D layout is exactly MAE's ``get_2d_sincos_pos_embed`` (and HF ViTMAE's): the first half of the channels
encodes the column (w) index, the second half the row (h) index, each half as ``[sin | cos]`` with frequencies
``1 / 10000 ** (k / (d/2))``. The n-D version applies the same rule with the axes in reverse order (w, h, d for
3D), so 2D is a special case of it. For 3D the channels are split across axes as evenly as the sin/cos pairs allow
(``embed_dim // 6 * 2`` per axis, the remaining pairs going to the first axes in that order).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from geomed_ssl.errors import ConfigError


def check_sincos_dim(embed_dim: int, ndim: int, key: str) -> None:
    """A ConfigError ``key: ...`` unless ``embed_dim`` channels split into sin-cos positions over ``ndim`` axes
    (:func:`axis_dims`): the encoder's ``model.embed_dim``, MAE's decoder's."""
    try:
        axis_dims(embed_dim, ndim)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def axis_dims(embed_dim: int, ndim: int) -> list[int]:
    """Channels given to each axis, listed in embedding order (last spatial axis first); each is even."""
    if ndim == 2:
        if embed_dim % 4:
            raise ValueError(f"2D sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}.")
        return [embed_dim // 2, embed_dim // 2]
    if embed_dim % 2 or embed_dim < 2 * ndim:
        raise ValueError(f"{ndim}D sin-cos position embeddings need an even embed_dim >= {2 * ndim}, got {embed_dim}.")
    pairs = embed_dim // 2
    dims = [2 * (pairs // ndim)] * ndim
    for i in range(pairs % ndim):
        dims[i] += 2
    return dims


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``(M,)`` float64 positions -> ``(M, dim)`` as ``[sin | cos]`` (MAE's 1D formula)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed(grid: tuple[int, ...], embed_dim: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed sin-cos embedding for a token grid, row-major token order.

    Returns float32 ``(prod(grid), embed_dim)``, or ``(1 + prod(grid), embed_dim)`` with a zero row first when
    ``cls_token`` (the CLS token's position, as in MAE).
    """
    grid = tuple(int(g) for g in grid)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    coords = [c.reshape(-1) for c in coords]  # ndim x (N,)
    dims = axis_dims(embed_dim, len(grid))
    parts = [sincos_1d(coords[axis], d) for axis, d in zip(reversed(range(len(grid))), dims)]
    pos = torch.cat(parts, dim=1)  # (N, D)
    if cls_token:
        pos = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), pos], dim=0)
    return pos.float()


def interpolate_pos_embed(pos: torch.Tensor, old_grid: tuple[int, ...], new_grid: tuple[int, ...]) -> torch.Tensor:
    """Resample a ``(N_old, D)`` grid embedding to ``(N_new, D)``: bicubic in 2D, trilinear in 3D.

    For learned embeddings (a checkpoint meeting a new window size). Fixed sin-cos embeddings are better recomputed
    with :func:`sincos_pos_embed` for the new grid, which is what :class:`ViTEncoder` does.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos
    if pos.shape[0] != math.prod(old_grid):
        raise ValueError(f"pos has {pos.shape[0]} rows but the grid {old_grid} has {math.prod(old_grid)} tokens.")
    mode = {2: "bicubic", 3: "trilinear"}[len(old_grid)]
    dim = pos.shape[1]
    x = pos.float().T.reshape(1, dim, *old_grid)  # (1, D, *old)
    x = F.interpolate(x, size=new_grid, mode=mode, align_corners=False)
    return x.reshape(dim, -1).T.to(pos.dtype)  # (N_new, D)


@lru_cache(maxsize=32)
def _cached_sincos(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    with torch.device("cpu"):  # never cache a meta tensor (models are built on the meta device to check exports)
        return sincos_pos_embed(grid, dim)  # (N, D) float32, CPU; treat as read-only


def grid_pos_embed(grid: tuple[int, ...], dim: int, ref: torch.Tensor) -> torch.Tensor:
    """``(1, N, D)`` sin-cos positions for ``grid`` on ``ref``'s device and dtype (recomputed, cached on CPU)."""
    return _cached_sincos(tuple(grid), dim).to(device=ref.device, dtype=ref.dtype)[None]
