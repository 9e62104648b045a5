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

The registered method ``cross_band`` runs the shared encoder on each direction's input (the hidden group's bands
set to 0) and a linear head per direction predicts the hidden bands of every token's pixels; the loss is the mean
squared error over valid pixels, averaged over both directions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, SSLMethod
from geomed_ssl.methods.masking import patchify
from geomed_ssl.methods.mim import global_mean, prepare_image
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

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


@dataclass
class CrossBandSettings(MethodSettings):
    """The ``method:`` keys of ``name: cross_band``."""

    split: str = setting("contiguous", "how the bands are split in two: contiguous halves in wavelength order "
                         "(the semantic task) or alternate bands (near interpolation; weaker)", choices=SPLITS)
    bands_a: list[int] | None = setting(None, "group A by 0-based band index (group B: every other band); null: "
                                        "the split rule", bounds=">= 0")

    def groups(self, bands: int, wavelengths: Sequence[float | None] | None = None) -> tuple[list[int], list[int]]:
        """The two band groups for data of ``bands`` bands."""
        if self.bands_a is None:
            return split_bands(bands, wavelengths, self.split)
        return check_split(bands, self.bands_a, [i for i in range(bands) if i not in set(self.bands_a)])

    def check(self, source: str, context: MethodContext) -> None:
        if context.bands is not None:
            try:
                self.groups(context.bands)
            except ConfigError as err:
                raise ConfigError(f"{source}: method 'cross_band': {err}") from None


@register_method
class CrossBand(SSLMethod):
    """Predict each band group's pixels from the other group's (both directions)."""

    name = "cross_band"
    card = MethodCard(
        learns="what material lies where, as the link between one end of the spectrum and the other (the "
               "multispectral counterpart of colourisation)",
        cost="2x (one encoder pass per direction)",
        failure_modes="highly correlated bands make it an interpolation exercise (use the contiguous split, "
                      "not alternate); single-band data are refused; the encoder never sees every band at once "
                      "during pretraining, so fine-tune rather than probe",
        recipes=("recipes/pretext_sentinel2.yaml",))
    Settings = CrossBandSettings
    settings: CrossBandSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: CrossBandSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        self.patch_size = tuple(encoder_cfg.patch_size)
        self.group_a, self.group_b = self.settings.groups(encoder_cfg.in_chans, encoder_cfg.wavelengths)
        self.encoder = ViTEncoder(encoder_cfg)
        pixels = math.prod(self.patch_size)
        self.heads = nn.ModuleList([nn.Linear(encoder_cfg.embed_dim, pixels * len(self.group_b)),  # A -> B
                                    nn.Linear(encoder_cfg.embed_dim, pixels * len(self.group_a))])  # B -> A

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``image`` (B, C, *S) nodata zeroed -> the loss (mean of both directions) and each direction's."""
        views = cross_band_views(image, self.group_a, self.group_b)
        tokens = self.encoder(torch.cat([v.input for v in views]))[:, 1:]  # (2B, N, D)
        b = image.shape[0]
        losses = []
        for d, view in enumerate(views):
            pred = self.heads[d](tokens[d * b:(d + 1) * b])  # (B, N, P*c)
            target = patchify(view.target, self.patch_size)  # (B, N, P*c)
            err = (pred - target) ** 2
            weight = torch.ones_like(err) if valid is None else patchify(
                valid[:, None].expand_as(view.target), self.patch_size).to(err.dtype)
            losses.append(global_mean(err, weight, self.training))
        return (losses[0] + losses[1]) / 2, losses

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        loss, (a_to_b, b_to_a) = self(image, valid)
        return MethodOutput(loss=loss, logs={"a_to_b_loss": a_to_b.detach(), "b_to_a_loss": b_to_a.detach()})
