"""Context prediction (Doersch et al., 2015): where does a patch sit among the 8 neighbours of a centre patch? The
pieces and the registered method ``context`` (both patches encoded on their own, their CLS features concatenated
through an MLP head, 8-way cross-entropy). 2D only: the 26 neighbours of a 3D patch would need windows far larger
than volumes train on.

A centre patch is drawn anywhere it leaves room for its neighbours, one of its 8 neighbours is chosen, and the
neighbour is placed one patch plus ``gap`` away in that direction, then jittered by up to ``jitter`` pixels on each
axis. The gap stops lines and textures that run across the border from giving the answer away, the jitter stops the
network from measuring the exact offset of continuing low-frequency structure (the paper: 96 px patches, 48 px gap,
up to 7 px jitter). Each patch is standardised per band on its own by default, so a brightness trend across the
window does not tell the direction either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, PerSample, SSLMethod
from geomed_ssl.methods.mim import prepare_image
from geomed_ssl.methods.pretext import PretextSettings, classification_output, mlp_head, refuse_volumes
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.methods.crops import crop_at, shared_valid, standardize
from geomed_ssl.methods.rotation import uniform_ints

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


CONTEXT_DRAWS = 5  # uniform draws per sample: the label, the centre's row and column, the jitter's


def context_pairs(x: torch.Tensor, patch: int, gap: int, jitter: int, draws: torch.Tensor,
                  normalize: bool = True, multiple_of: int = 1, valid: torch.Tensor | None = None) -> ContextPair:
    """One (centre, neighbour, label) pair per sample of (B, C, H, W), from ``draws`` (B, 5) uniform [0, 1), each
    sample's own (:class:`PerSample`). With ``valid`` (B, H, W) bool both patches keep only the pixels valid in
    both (the rest 0, and left out of the standardisation), so where nodata lies cannot tell the direction."""
    b, _, *window = x.shape
    check_context(window, patch, gap, jitter, multiple_of)
    draws = draws.to(x.device)
    if draws.shape != (b, CONTEXT_DRAWS):
        raise ValueError(f"draws {tuple(draws.shape)} must be (B, {CONTEXT_DRAWS}).")
    reach = patch + gap + jitter  # furthest a neighbour's corner lies from the centre's, per axis
    h, w = window
    label = uniform_ints(draws[:, 0], len(NEIGHBOURS))
    span = torch.tensor([h - patch - 2 * reach, w - patch - 2 * reach], device=x.device)  # (2,)
    centre = reach + uniform_ints(draws[:, 1:3], span + 1)  # (B, 2)
    shake = uniform_ints(draws[:, 3:5], 2 * jitter + 1) - jitter  # (B, 2)
    steps = torch.tensor(NEIGHBOURS, device=x.device)[label]  # (B, 2)
    neighbour = centre + steps * (patch + gap) + shake  # (B, 2)
    starts, source = torch.cat([centre, neighbour]), torch.arange(b, device=x.device).repeat(2)
    crops = crop_at(x, starts, (patch, patch), source)
    common = None
    if valid is not None:
        masks = crop_at(valid.to(x.device).bool()[:, None], starts, (patch, patch), source)  # (2B, 1, p, p)
        common = shared_valid(masks.reshape(2, b, 1, patch, patch), dim=0).expand(2, -1, -1, -1, -1).flatten(0, 1)
    if normalize:
        crops = standardize(crops, valid=common)
    elif common is not None:
        crops = crops * common
    return ContextPair(crops[:b], crops[b:], label)


def context_geometry(window: Sequence[int], token: int, patch: int | None = None, gap: int | None = None,
                     jitter: int | None = None) -> tuple[int, int, int]:
    """(patch, gap, jitter) in pixels, checked (:func:`check_context`). Unset values: gap half the patch (the
    paper's 48 px of 96), jitter an eighth of it (12 px of 96; the paper's is up to 7), and the patch the largest
    multiple of the ``token`` patch whose 3x3 layout fits the window."""
    def layout(p: int) -> tuple[int, int, int]:
        g = p // 2 if gap is None else gap
        return p, g, (min(g, p // 8) if jitter is None else jitter)

    if patch is None:
        patch = token
        side = min(int(w) for w in window)
        while True:
            p, g, j = layout(patch + token)
            if 3 * p + 2 * g + 2 * j > side:
                break
            patch += token
    p, g, j = layout(patch)
    check_context(window, p, g, j, token)
    return p, g, j


@dataclass
class ContextSettings(PretextSettings):
    """The ``method:`` keys of ``name: context``."""

    patch: int | None = setting(None, "side of the two patches in pixels, a multiple of model.patch_size; null: "
                                "the largest whose 3x3 layout fits the window", bounds=">= 1")
    gap: int | None = setting(None, "pixels between neighbouring patches; null: half the patch", bounds=">= 0")
    jitter: int | None = setting(None, "random shift of the neighbour per axis, at most gap; null: an eighth of "
                                 "the patch", bounds=">= 0")

    def check(self, source: str, context: MethodContext) -> None:
        refuse_volumes("context", context, "the 26 neighbours of a 3D patch need windows far larger than volumes "
                       "train on", source)
        if context.window is not None and context.patch is not None:
            try:
                context_geometry(context.window, math.lcm(*context.patch), self.patch, self.gap, self.jitter)
            except ConfigError as err:
                raise ConfigError(f"{source}: method 'context': {err}") from None


@register_method
class Context(SSLMethod):
    """Say where a patch sits among the 8 neighbours of a centre patch."""

    name = "context"
    embedding_pool = "cls"
    card = MethodCard(
        learns="spatial layout: what lies above, below or beside what (object parts, roads leading to "
               "settlements), from two patches encoded on their own",
        cost="~2 / 9 of the encoder's cost on the window (two small patches per window)",
        failure_modes="trivial shortcuts (continuing lines, chromatic aberration, vignetting) are blocked by the "
                      "gap and jitter but may remain in stitched or striped products; homogeneous scenes give "
                      "no answer; 2D only",
        recipes=("recipes/pretext_sentinel2.yaml",), dims="2D")
    Settings = ContextSettings
    settings: ContextSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: ContextSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        self.token = math.lcm(*encoder_cfg.patch_size)
        self.encoder = ViTEncoder(encoder_cfg)
        self.head = mlp_head(2 * encoder_cfg.embed_dim, self.settings.head_hidden_dim, len(NEIGHBOURS))

    def forward(self, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        """Two (B, C, p, p) patches -> (B, 8) logits."""
        cls = self.encoder(torch.cat([centre, neighbour]))[:, 0]  # (2B, D)
        b = centre.shape[0]
        return self.head(torch.cat([cls[:b], cls[b:]], dim=-1))

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        s = self.settings
        p, g, j = context_geometry(tuple(image.shape[2:]), self.token, s.patch, s.gap, s.jitter)
        draws = PerSample.from_batch(batch, generator).rand(CONTEXT_DRAWS)
        pair = context_pairs(image, p, g, j, draws, multiple_of=self.token, valid=valid)
        return classification_output(self(pair.centre, pair.neighbour), pair.label)
