"""Cross-band prediction, split-brain style (Zhang et al., 2017) for multispectral data: the bands are split into
two groups and each group is predicted from the other (both directions), the multispectral counterpart of
predicting colour from lightness.

Default split: **contiguous halves in wavelength order** (file order when any wavelength is unknown), e.g. visible
and red edge against NIR and SWIR for Sentinel-2. Predicting one end of the spectrum from the other needs to know
*what material* is there (vegetation, water, soil reflect differently beyond 700 nm), which is the semantic signal
we want. The ``alternate`` split (even / odd positions in wavelength order) is offered but is the weaker task:
each band has measured neighbours on both sides, so a per-pixel interpolation between adjacent wavelengths solves
most of it, above all on hyperspectral data, and the network learns little spatial or semantic structure.

Single-band data cannot be split into an input and a target, so it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from geomed_ssl.errors import ConfigError

SPLITS = ("contiguous", "alternate")


class CrossBandView(NamedTuple):
    input: torch.Tensor  # (B, C, *S), the target bands set to 0 (the band mean in standardised space)
    target: torch.Tensor  # (B, len(target_bands), *S)
    input_bands: list[int]
    target_bands: list[int]


def band_order(num_bands: int, wavelengths: Sequence[float | None] | None = None) -> list[int]:
    """Band indices by increasing centre wavelength (stable), or in file order when any wavelength is unknown."""
    if wavelengths is None or len(wavelengths) != num_bands or any(w is None for w in wavelengths):
        return list(range(num_bands))
    return sorted(range(num_bands), key=lambda i: float(wavelengths[i]))  # type: ignore[arg-type]


def check_split(num_bands: int, group_a: Sequence[int], group_b: Sequence[int]) -> tuple[list[int], list[int]]:
    """Validate two band groups: both non-empty, disjoint, in [0, num_bands); returns them sorted."""
    if num_bands < 2:
        raise ConfigError(f"cross_band needs at least 2 bands (one to see, one to predict); the data has "
                          f"{num_bands}: use another method (mae, simmim, dino) for single-band data.")
    a, b = sorted(int(i) for i in group_a), sorted(int(i) for i in group_b)
    for name, group in (("A", a), ("B", b)):
        if not group:
            raise ConfigError(f"cross_band split leaves group {name} empty ({a} vs {b}); give both groups at "
                              "least one band.")
        if any(not 0 <= i < num_bands for i in group) or len(set(group)) != len(group):
            raise ConfigError(f"cross_band group {name} = {group} must list distinct band indices in "
                              f"[0, {num_bands - 1}].")
    if set(a) & set(b):
        raise ConfigError(f"cross_band groups {a} and {b} share bands {sorted(set(a) & set(b))}; a band cannot be "
                          "both seen and predicted.")
    return a, b


def split_bands(num_bands: int, wavelengths: Sequence[float | None] | None = None,
                mode: str = "contiguous") -> tuple[list[int], list[int]]:
    """Two band groups covering every band: the shorter-wavelength half (``ceil(C / 2)`` bands) and the rest with
    ``contiguous``, even and odd positions in wavelength order with ``alternate``; each sorted by index."""
    if mode not in SPLITS:
        raise ConfigError(f"cross_band split '{mode}' is unknown; use one of {', '.join(SPLITS)}.")
    if num_bands < 2:
        check_split(num_bands, [], [])  # the single-band message
    order = band_order(num_bands, wavelengths)
    if mode == "contiguous":
        half = (num_bands + 1) // 2
        a, b = order[:half], order[half:]
    else:
        a, b = order[0::2], order[1::2]
    return check_split(num_bands, a, b)


def cross_band_views(x: torch.Tensor, group_a: Sequence[int], group_b: Sequence[int]) -> list[CrossBandView]:
    """Both directions of a split of (B, C, *S): A -> B then B -> A."""
    a, b = check_split(x.shape[1], group_a, group_b)
    views = []
    for seen, hidden in ((a, b), (b, a)):
        inp = x.clone()
        inp[:, hidden] = 0
        views.append(CrossBandView(inp, x[:, hidden], seen, hidden))
    return views
