"""The token grid: how many patches of ``patch_size`` tile an input along each spatial axis.

The one place that turns a spatial shape into a token grid (patch embeddings, patchify, previews, masks), so every
caller refuses a window that is not whole tokens with the same message.
"""

from __future__ import annotations

from typing import Sequence

from geomed_ssl.errors import DataError


def token_grid(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """``spatial_shape // patch_size`` per axis (2D or 3D); a DataError if the axes differ in number or the patch
    does not divide the shape."""
    spatial, patch = tuple(int(s) for s in spatial_shape), tuple(int(p) for p in patch_size)
    if len(spatial) != len(patch) or any(s % p for s, p in zip(spatial, patch)):
        raise DataError(
            f"input of spatial shape {spatial} is not a {len(patch)}D multiple of the patch size {patch}; use "
            "windows whose sides are multiples of model.patch_size."
        )
    return tuple(s // p for s, p in zip(spatial, patch))
