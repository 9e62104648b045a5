"""Context-encoder inpainting (Pathak et al., 2016): the central region of every window is hidden and
reconstructed from its surroundings, 2D and 3D.

``fraction`` is the region's side as a fraction of the window's side on every axis (the paper hides the central
64 px of 128 px images: 0.5, a quarter of the area; in 3D 0.5 hides an eighth of the volume). With a token
``patch`` the region is snapped to whole tokens, so a token mask describes it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.models.tokens import token_grid


def center_box(window: Sequence[int], fraction: float, patch: Sequence[int] | None = None) -> tuple[slice, ...]:
    """The hidden region as one slice per spatial axis: about ``fraction`` of each side, centred, in whole tokens
    of ``patch`` when given. Refuses a fraction outside (0, 1) and a region of no token or of the whole window."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"inpainting fraction must be in (0, 1) (the hidden side over the window side), got "
                          f"{fraction}.")
    patch = tuple(patch) if patch is not None else (1,) * len(window)
    box = []
    for side, p in zip(window, patch):
        cells = side // p
        n = round(fraction * cells)
        if not 1 <= n < cells:
            raise ConfigError(f"inpainting fraction {fraction} of a {side} px side in {p} px tokens hides {n} of "
                              f"{cells} tokens; choose a fraction that hides at least one and not all.")
        start = (cells - n) // 2 * p
        box.append(slice(start, start + n * p))
    return tuple(box)


def center_mask(window: Sequence[int], fraction: float, patch: Sequence[int] | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(*window) bool, True in the hidden central region of :func:`center_box`."""
    mask = torch.zeros(tuple(window), dtype=torch.bool, device=device)
    mask[center_box(window, fraction, patch)] = True
    return mask


def center_token_mask(window: Sequence[int], patch: Sequence[int], fraction: float,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """(N,) float, 1 on the tokens of the hidden region, in :func:`~geomed_ssl.methods.masking.patchify`'s
    row-major token order over ``window // patch``."""
    return center_mask(token_grid(window, patch), fraction, None, device).flatten().float()


def hide_center(x: torch.Tensor, fraction: float, patch: Sequence[int] | None = None,
                fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *S) -> the input with its central region set to ``fill`` (0 = the band mean in standardised space),
    and the (*S) bool mask of that region."""
    mask = center_mask(tuple(x.shape[2:]), fraction, patch, x.device)
    return x.masked_fill(mask, fill), mask
