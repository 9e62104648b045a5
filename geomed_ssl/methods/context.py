"""Context prediction (Doersch et al., 2015): where does a patch sit among the 8 neighbours of a centre patch?
2D only: the 26 neighbours of a 3D patch would need windows far larger than volumes train on.

A centre patch is drawn anywhere it leaves room for its neighbours, one of its 8 neighbours is chosen, and the
neighbour is placed one patch plus ``gap`` away in that direction, then jittered by up to ``jitter`` pixels on each
axis. The gap stops lines and textures that run across the border from giving the answer away, the jitter stops the
network from measuring the exact offset of continuing low-frequency structure (the paper: 96 px patches, 48 px gap,
up to 7 px jitter). Each patch is standardised per band on its own by default, so a brightness trend across the
window does not tell the direction either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.crops import crop_at, standardize

# label -> (row step, column step): row-major around the centre, the centre itself skipped
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class ContextPair(NamedTuple):
    centre: torch.Tensor  # (B, C, p, p)
    neighbour: torch.Tensor  # (B, C, p, p)
    label: torch.Tensor  # (B,) long in [0, 8): index into NEIGHBOURS


def check_context(window: Sequence[int], patch: int, gap: int, jitter: int, multiple_of: int = 1) -> None:
    """Refuse (one line) volumes, a patch that is not a multiple of the token patch, a jitter larger than the gap
    (patches could touch), and a window too small for the 3x3 layout: ``3 p + 2 gap + 2 jitter`` per side."""
    if len(window) != 2:
        raise ConfigError(f"context prediction is 2D-only; the data has {len(window)}D windows {tuple(window)}: use "
                          "mae, simmim or inpainting for volumes.")
    if patch < 1 or patch % multiple_of:
        raise ConfigError(f"context patch {patch} px must be a positive multiple of the token patch {multiple_of}.")
    if gap < 0 or not 0 <= jitter <= gap:
        raise ConfigError(f"context jitter {jitter} px must be in [0, gap={gap}] (gap >= 0), so the two patches "
                          "never touch.")
    need = 3 * patch + 2 * gap + 2 * jitter
    if min(window) < need:
        raise ConfigError(f"context prediction needs windows of at least 3 x patch + 2 x gap + 2 x jitter = {need} "
                          f"px, got {tuple(window)}: use a larger window or a smaller patch / gap.")


def context_pairs(x: torch.Tensor, patch: int, gap: int, jitter: int, generator: torch.Generator,
                  normalize: bool = True, multiple_of: int = 1) -> ContextPair:
    """One (centre, neighbour, label) pair per sample of (B, C, H, W); all draws from ``generator`` (its device)."""
    b, _, *window = x.shape
    check_context(window, patch, gap, jitter, multiple_of)
    dev = generator.device
    reach = patch + gap + jitter  # furthest a neighbour's corner lies from the centre's, per axis
    h, w = window
    label = torch.randint(0, len(NEIGHBOURS), (b,), generator=generator, device=dev).to(x.device)
    u = torch.rand(b, 2, generator=generator, device=dev).to(x.device)
    span = torch.tensor([h - patch - 2 * reach, w - patch - 2 * reach], device=x.device)  # (2,)
    centre = reach + (u * (span + 1)).long().clamp_max(span)  # (B, 2)
    shake = torch.randint(-jitter, jitter + 1, (b, 2), generator=generator, device=dev).to(x.device)
    steps = torch.tensor(NEIGHBOURS, device=x.device)[label]  # (B, 2)
    neighbour = centre + steps * (patch + gap) + shake  # (B, 2)
    crops = crop_at(x, torch.cat([centre, neighbour]), (patch, patch), torch.arange(b, device=x.device).repeat(2))
    if normalize:
        crops = standardize(crops)
    return ContextPair(crops[:b], crops[b:], label)
