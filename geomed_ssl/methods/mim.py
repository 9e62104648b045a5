"""Shared pieces of the masked-image-modelling methods (SimMIM, MaskFeat, BEiT, inpainting): the encoder run on
every token with a learned mask token at the masked positions, token weights that leave nodata out, and loss means
over the global batch.

Unit-major embeddings (``grouped``, ``spectral``: U tokens per position) are masked per position, every unit at a
masked position at once (masking a single band group would let the encoder read the hidden content off the
others), and the encoder's outputs are merged per position (the mean over units) before the heads, so targets
stay one per spatial token whatever the embedding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from geomed_ssl.methods.base import MethodContext, PerSample, mean_over_ranks
from geomed_ssl.methods.dino import block_mask, token_valid_fraction, zero_invalid
from geomed_ssl.models.encoder import ViTEncoder

MIN_TOKEN_VALID = 0.5  # a token enters a per-token loss when at least this fraction of its pixels is valid


class MaskToken(nn.Module):
    """The learned token that replaces the embedding of a masked position (``(1, 1, D)``, normal(0.02))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"token"}


def encode_masked(encoder: ViTEncoder, mask_token: MaskToken, image: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Run ``encoder`` on every token of ``image`` (B, C, *S), the tokens of masked positions replaced by the mask
    token plus their position (SimMIM / BEiT): ``mask`` (B, N) float, 1 = masked. Returns the spatial tokens
    (B, N, D) (units merged), the CLS token (B, D) and the grid."""
    tokens, grid = encoder.embed(image)  # (B, T, D), positions added; T = U * N
    n = math.prod(grid)
    units = tokens.shape[1] // n
    pos = encoder.pos_embed_for(grid, tokens).repeat(1, units, 1)  # (1, T, D)
    w = mask.to(tokens.dtype).repeat(1, units)[..., None]  # (B, T, 1)
    tokens = tokens * (1 - w) + (mask_token.token.to(tokens.dtype) + pos) * w
    out, _ = encoder.run_blocks(encoder.add_cls(tokens))  # (B, 1+T, D)
    return encoder.spatial_tokens(out[:, 1:], grid), out[:, 0], grid


def token_weights(mask: torch.Tensor, valid: torch.Tensor | None, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, N) float: 1 on masked tokens at least half valid, else 0."""
    if valid is None:
        return mask.float()
    ok = token_valid_fraction(valid.to(mask.device), patch) >= MIN_TOKEN_VALID  # (B, N)
    return mask.float() * ok.float()


def global_mean(values: torch.Tensor, weights: torch.Tensor, training: bool) -> torch.Tensor:
    """``sum(values * weights) / sum(weights)``, the denominator averaged over ranks in training (see
    ``methods.base``: DDP's mean of the per-rank losses is then the global batch's loss); 0 with no weight."""
    count = weights.sum()
    denominator = mean_over_ranks(count) if training else count.detach()
    return (values * weights).sum() / denominator.clamp_min(1e-6)


def prepare_image(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's image (B, C, *S) with nodata pixels set to 0 (the normalised mean), and its valid mask."""
    image, valid = batch["image"], batch.get("valid")
    if valid is not None:
        valid = valid.bool()
    return zero_invalid(image, valid), valid


def block_masks(samples: PerSample, grid: tuple[int, ...], ratio: float) -> torch.Tensor:
    """BEiT's blockwise masks, one per sample from its own stream: (B, N) float, 1 = masked, about
    ``ratio`` of the tokens (boxes of random size and aspect until the count is reached)."""
    target = max(1, min(math.prod(grid) - 1, round(ratio * math.prod(grid))))
    masks = [block_mask(grid, target, samples.generator(i)).flatten() for i in range(len(samples))]
    return torch.stack(masks).float()


def check_unit_free(method: str, context: MethodContext, why: str) -> str | None:
    """A one-line refusal when ``context``'s embedding gives several tokens per position, else None (grouped /
    spectral pooled to one token per position by ``model.tokens_per_position: 1`` pass)."""
    if context.embedding in ("grouped", "spectral") and context.tokens_per_position != 1:
        k = context.tokens_per_position
        gives = f"{k} (model.tokens_per_position)" if k else "one per band group / chunk"
        return (f"method '{method}' needs one token per position ({why}); model.embedding={context.embedding} "
                f"gives {gives}: set model.tokens_per_position=1, or use plain or wavelength.")
    return None
