"""Rotation prediction (Gidaris et al., 2018): which of 0/90/180/270 degrees was a window turned by?

2D windows turn in the (H, W) plane; volumes about a chosen spatial axis (0, 1 or 2 of (D, H, W)), in the plane
of the other two. The plane must be square, since a quarter turn would otherwise change the window's shape.
Label ``k`` is ``torch.rot90(x, k, plane)``: k quarter turns from the plane's first axis towards its second.
"""

from __future__ import annotations

import torch

from geomed_ssl.errors import ConfigError

NUM_ROTATIONS = 4


def rotation_plane(spatial: tuple[int, ...], axis: int | None = None) -> tuple[int, int]:
    """Tensor dims of the rotation plane for a (B, C, *spatial) batch: (2, 3) in 2D, the two spatial axes other
    than ``axis`` (default 0, the first) in 3D. Refuses a non-square plane or an axis out of range."""
    nd = len(spatial)
    if nd == 2:
        if axis is not None:
            raise ConfigError(f"rotation axis={axis} is for volumes; 2D windows always turn in their (H, W) plane.")
        plane = (0, 1)
    elif nd == 3:
        axis = 0 if axis is None else axis
        if axis not in (0, 1, 2):
            raise ConfigError(f"rotation axis must be 0, 1 or 2 (a spatial axis of (D, H, W)), got {axis}.")
        plane = tuple(a for a in range(3) if a != axis)
    else:
        raise ConfigError(f"rotation prediction needs 2D or 3D windows, got {nd}D.")
    if spatial[plane[0]] != spatial[plane[1]]:
        raise ConfigError(f"rotation needs a square plane to turn by 90 degrees; the window {spatial} has sides "
                          f"{spatial[plane[0]]} and {spatial[plane[1]]} there: use a square window (or another "
                          "axis).")
    return 2 + plane[0], 2 + plane[1]


def rotate(x: torch.Tensor, k: torch.Tensor, plane: tuple[int, int]) -> torch.Tensor:
    """Turn sample ``i`` of (B, C, *S) by ``k[i]`` quarter turns in ``plane``; same shape."""
    out = torch.empty_like(x)
    k = k.to(x.device)
    for r in range(NUM_ROTATIONS):
        sel = k == r
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], r, plane)
    return out


def rotation_batch(x: torch.Tensor, generator: torch.Generator, axis: int | None = None,
                   all_rotations: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated windows and their labels.

    Args:
        x: (B, C, *S), 2D or 3D.
        generator: draws one rotation per sample (on its device); unused with ``all_rotations``.
        axis: for volumes, the spatial axis to turn about (default 0).
        all_rotations: every sample in all 4 rotations (RotNet's training batch), rotation-major.

    Returns:
        rotated (B, C, *S), or (4B, C, *S) with ``all_rotations``; labels (B,) or (4B,) long in [0, 4).
    """
    plane = rotation_plane(tuple(x.shape[2:]), axis)
    if all_rotations:
        rotated = torch.cat([torch.rot90(x, r, plane) for r in range(NUM_ROTATIONS)])
        labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
        return rotated, labels
    labels = torch.randint(0, NUM_ROTATIONS, (x.shape[0],), generator=generator, device=generator.device)
    labels = labels.to(x.device)
    return rotate(x, labels, plane), labels
