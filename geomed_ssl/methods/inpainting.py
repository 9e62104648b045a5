"""Context-encoder inpainting (Pathak et al., 2016): the central region of every window is hidden and
reconstructed from its surroundings, 2D and 3D.

The registered method ``inpainting`` hides the region's tokens behind the learned mask token (so the encoder
sees only the surroundings, on any embedding), and a light transformer decoder over every token predicts the
region's pixels, every band; the loss is the paper's L2 on the hidden region's valid pixels (its adversarial term
is left out: it sharpens pictures, not features). The region sits at the centre of each view's random crop, so
its content varies with the crops.

``fraction`` is the region's side as a fraction of the window's side on every axis (the paper hides the central
64 px of 128 px images: 0.5, a quarter of the area; in 3D 0.5 hides an eighth of the volume). With a token
``patch`` the region is snapped to whole tokens, so a token mask describes it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MAX_DEPTH, MAX_EMBED_DIM, MAX_HEADS, MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, SSLMethod
from geomed_ssl.methods.masking import mask_to_image, patchify, unpatchify
from geomed_ssl.methods.mim import MaskToken, encode_masked, global_mean, prepare_image
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.mae_decoder import MAEDecoder
from geomed_ssl.models.tokens import token_grid


def center_box(window: Sequence[int], fraction: float, patch: Sequence[int] | None = None) -> tuple[slice, ...]:
    """The hidden region as one slice per spatial axis: about ``fraction`` of each side, in whole tokens of ``patch``
    when given (rounded half to even: 0.5 of 5 tokens hides 2), centred to within half a token (the extra token of
    an odd remainder goes after it). Refuses a fraction outside (0, 1) and a region of no token or of the whole
    window."""
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


@dataclass
class InpaintingSettings(MethodSettings):
    """The ``method:`` keys of ``name: inpainting``."""

    fraction: float = setting(0.5, "side of the hidden central region over the window's side, per axis (0.5: a "
                              "quarter of the area, an eighth of a volume), in whole tokens", bounds="(0, 1)")
    decoder_embed_dim: int = setting(128, "decoder token width", bounds=f"[1, {MAX_EMBED_DIM}]")
    decoder_depth: int = setting(2, "decoder transformer blocks", bounds=f"[1, {MAX_DEPTH}]")
    decoder_num_heads: int = setting(4, "decoder attention heads (divide decoder_embed_dim)",
                                     bounds=f"[1, {MAX_HEADS}]")

    def check(self, source: str, context: MethodContext) -> None:
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ConfigError(f"{source}: method.decoder_embed_dim ({self.decoder_embed_dim}) must be divisible by "
                              f"method.decoder_num_heads ({self.decoder_num_heads}).")
        if context.window is not None and context.patch is not None:
            try:
                center_box(context.window, self.fraction, context.patch)
            except ConfigError as err:
                raise ConfigError(f"{source}: method.{err}") from None


@register_method
class Inpainting(SSLMethod):
    """Reconstruct the hidden centre of each window from its surroundings."""

    name = "inpainting"
    card = MethodCard(
        learns="to continue structures from the surroundings into a large hidden centre, every band of every "
               "pixel (the context encoder's task, on a ViT)",
        cost="~1.5x MAE (benchmarks/bench_methods_step.py; the encoder sees every token, a light decoder)",
        failure_modes="one large region is harder and less varied than MAE's random masks, so it learns slower; "
                      "blurry centres are normal (L2 averages the possibilities)",
        recipes=("recipes/pretext_sentinel2.yaml",))
    Settings = InpaintingSettings
    settings: InpaintingSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: InpaintingSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.patch_size = tuple(encoder_cfg.patch_size)
        self.in_chans = encoder_cfg.in_chans
        self.encoder = ViTEncoder(encoder_cfg)
        self.mask_token = MaskToken(encoder_cfg.embed_dim)
        self.decoder = MAEDecoder(encoder_cfg.embed_dim, s.decoder_embed_dim, s.decoder_depth, s.decoder_num_heads,
                                  encoder_cfg.grid, math.prod(self.patch_size), [self.in_chans],
                                  encoder_cfg.mlp_ratio, encoder_cfg.norm_eps)

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """``image`` (B, C, *S) nodata zeroed -> loss, predictions (B, N, P*C), token mask (B, N)."""
        window = tuple(image.shape[2:])
        b = image.shape[0]
        mask = center_token_mask(window, self.patch_size, self.settings.fraction, image.device).expand(b, -1)
        tokens, cls, grid = encode_masked(self.encoder, self.mask_token, image, mask)  # (B, N, D)
        restore = torch.arange(tokens.shape[1], device=image.device).expand(b, -1)  # (B, N): no shuffle
        pred = self.decoder(torch.cat([cls[:, None], tokens], dim=1), restore, grid)  # (B, N, P*C)
        err = (pred - patchify(image, self.patch_size)) ** 2
        weight = mask[..., None].expand_as(err)
        if valid is not None:
            weight = weight * patchify(valid[:, None].expand_as(image), self.patch_size).to(err.dtype)
        return global_mean(err, weight, self.training), pred, mask

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        loss, _, _ = self(image, valid)
        return MethodOutput(loss=loss, logs={"recon_loss": loss.detach()})

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor, valid: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Previews: the centre predicted, in the input's normalised space (``noise`` unused: the region is fixed)."""
        was_training = self.training
        self.eval()
        try:
            clean, valid = prepare_image({"image": image, "valid": valid})
            loss, pred, mask = self(clean, valid)
            grid = tuple(w // p for w, p in zip(image.shape[2:], self.patch_size))
            return {"pred_image": unpatchify(pred, self.patch_size, grid, self.in_chans),
                    "mask_image": mask_to_image(mask, self.patch_size, grid), "loss": loss}
        finally:
            self.train(was_training)
