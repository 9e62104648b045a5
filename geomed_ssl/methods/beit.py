"""BEiT (Bao et al., 2022) with a visual tokenizer learned from the user's own data, 2D and 3D, any band count.

No pretrained dVAE reads arbitrary band sets, so the discrete visual tokens are the nearest codes of a k-means
codebook (:class:`~geomed_ssl.methods.tokenizer.PatchTokenizer`) over the normalised pixel vectors of the data's
token patches (every band of every pixel). It is fitted once, before a new run's first step
(:meth:`BEiT.fit_to_data`), on ``tokenizer_windows`` training windows, and kept as a buffer of the method, so every
checkpoint holds it and a resumed run tokenises exactly as it started. ``codebook_size: auto`` takes
``min(1024, patches // 32)`` codes for the patches it is fitted on (logged); an explicit size larger than those
patches is refused before training.

Training is BEiT's: blockwise masking (~40 % of the tokens, boxes of random size and aspect), mask tokens in the
encoder, a linear head over the codebook, cross-entropy on the masked tokens (nodata-heavy tokens left out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import (MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod,
                                     mix_seed)
from geomed_ssl.methods.masking import patchify
from geomed_ssl.methods.mim import (MIN_TOKEN_VALID, MaskToken, block_masks, encode_masked, global_mean,
                                    prepare_image, token_valid_fraction, token_weights)
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.tokenizer import NORMALIZE, PatchTokenizer, resolve_codebook_size
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

TOKENIZER_STREAM = 0xBE17  # the codebook's random stream, apart from the training steps'


@dataclass
class BEiTSettings(MethodSettings):
    """The ``method:`` keys of ``name: beit``."""

    mask_ratio: float = setting(0.4, "fraction of the tokens hidden (blockwise boxes)", bounds="(0, 1)")
    codebook_size: int | str = setting("auto", "visual-token vocabulary; auto: min(1024, fitted patches // 32), "
                                       "logged; at most the patches the tokenizer is fitted on", bounds=">= 2",
                                       choices=("auto",))
    tokenizer_windows: int = setting(256, "training windows the codebook is fitted on, once at the start",
                                     bounds=">= 1")
    tokenizer_patches: int = setting(16384, "at most this many of their patches (a random subset) enter k-means",
                                     bounds=">= 2")
    tokenizer_normalize: str = setting("none", "what the codes see: none (the normalised pixels: spectra and "
                                       "texture), patch (mean 0, std 1 per patch: texture only), l2 (unit length: "
                                       "spectral shape, not brightness)", choices=NORMALIZE)

    def fitted_patches(self, context: MethodContext) -> int | None:
        """The distinct patches the codebook is fitted on: ``min(data windows, tokenizer_windows)`` x tokens per
        window, capped by ``tokenizer_patches``; None before the data is scanned."""
        if context.tokens is None:
            return None
        windows = self.tokenizer_windows if context.samples is None else min(context.samples, self.tokenizer_windows)
        return min(windows * context.tokens, self.tokenizer_patches)

    def check(self, source: str, context: MethodContext) -> None:
        if context.tokens is not None and round(self.mask_ratio * context.tokens) < 1:
            raise ConfigError(f"{source}: method.mask_ratio {self.mask_ratio} hides no token of the "
                              f"{context.tokens} per window; raise it.")
        patches = self.fitted_patches(context)
        if self.codebook_size != "auto" and patches is not None and context.samples is not None:
            try:
                resolve_codebook_size(self.codebook_size, patches)
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None

    def resolve_auto(self, context: MethodContext) -> list[str]:
        if self.codebook_size != "auto":
            return []
        patches = self.fitted_patches(context)
        self.codebook_size = resolve_codebook_size("auto", patches)
        return [f"method.codebook_size auto -> {self.codebook_size} visual tokens (k-means over {patches} patches of "
                f"the data; at most 1024 and one per 32 patches)."]


@register_method
class BEiT(SSLMethod):
    """Mask tokens in the encoder, a linear head over the data's own k-means codebook, cross-entropy on masked
    tokens."""

    name = "beit"
    card = MethodCard(
        learns="which kind of patch (a k-means code of its pixels over all bands) lies under each blockwise-hidden "
               "token: a classification target, coarser than pixels",
        cost="~1.9x MAE per step (benchmarks/bench_methods_step.py), plus one k-means fit at the start (seconds "
             "on a GPU; up to minutes on a CPU for large band counts)",
        failure_modes="a codebook dominated by one material (check the logged perplexity); codes of raw pixels "
                      "follow brightness, so on scenes with strong illumination trends try tokenizer_normalize: "
                      "patch or l2",
        recipes=("recipes/simmim_sentinel2.yaml",))
    Settings = BEiTSettings
    settings: BEiTSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: BEiTSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.patch_size = tuple(encoder_cfg.patch_size)
        size = s.codebook_size
        if size == "auto":  # built without the data (in Python): the ceiling for tokenizer_windows full windows
            size = resolve_codebook_size("auto", s.fitted_patches(MethodContext.from_encoder(encoder_cfg)))
        dim = math.prod(self.patch_size) * encoder_cfg.in_chans
        self.tokenizer = PatchTokenizer(int(size), dim, s.tokenizer_normalize)
        self.encoder = ViTEncoder(encoder_cfg)
        self.mask_token = MaskToken(encoder_cfg.embed_dim)
        self.head = nn.Linear(encoder_cfg.embed_dim, int(size))

    def fit_to_data(self, dataset: Sequence[dict[str, Any]], seed: int,
                    device: torch.device | str = "cpu") -> list[str]:
        """Fit the codebook on the patches of the first ``tokenizer_windows`` training samples that are at least
        half valid (the tokens the loss reads; nodata zeroed), on ``device``; the generator is seeded from ``seed``
        alone."""
        s = self.settings
        vectors, kept = [], []
        for i in range(s.tokenizer_windows):
            sample = dataset[i]
            valid = sample.get("valid")
            image, _ = prepare_image({"image": sample["image"][None], "valid": None if valid is None else valid[None]})
            vectors.append(patchify(image, self.patch_size)[0])  # (N, P*C)
            kept.append(torch.ones(len(vectors[-1]), dtype=torch.bool) if valid is None else
                        token_valid_fraction(valid[None].bool(), self.patch_size)[0] >= MIN_TOKEN_VALID)
        v = torch.cat(vectors)  # (windows * N, P*C)
        if int(torch.cat(kept).sum()) >= self.tokenizer.size:  # a fill value's patch would take a code of its own
            v = v[torch.cat(kept)]
        device = torch.device(device)
        generator = torch.Generator(device).manual_seed(mix_seed(seed, TOKENIZER_STREAM))
        self.tokenizer.to(device).fit(v.to(device), generator, max_samples=s.tokenizer_patches)
        self.tokenizer.to("cpu")
        ids = self.tokenizer.encode(v[: s.tokenizer_patches])
        return [f"beit: codebook of {self.tokenizer.size} visual tokens fitted on {min(len(v), s.tokenizer_patches)} "
                f"patches of {len(vectors)} sampled windows (a small archive repeats windows); "
                f"{self.tokenizer.perplexity(ids):.0f} codes in effective use."]

    def forward(self, image: torch.Tensor, valid: torch.Tensor | None, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (B, C, *S) nodata zeroed, ``mask`` (B, N) -> loss, masked-token accuracy."""
        mask = mask.to(image.device)
        tokens, _, _ = encode_masked(self.encoder, self.mask_token, image, mask)  # (B, N, D)
        logits = self.head(tokens).float()  # (B, N, K)
        target = self.tokenizer.encode(patchify(image, self.patch_size))  # (B, N)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        weights = token_weights(mask, valid, self.patch_size)
        hit = (logits.argmax(dim=-1) == target).float()
        accuracy = global_mean(hit, weights, self.training)  # logs are averaged over ranks: the global batch's
        return global_mean(ce, weights, self.training), accuracy.detach()

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        grid = tuple(w // p for w, p in zip(image.shape[2:], self.patch_size))
        mask = block_masks(PerSample.from_batch(batch, generator), grid, self.settings.mask_ratio)
        loss, accuracy = self(image, valid, mask)
        return MethodOutput(loss=loss, logs={"token_loss": loss.detach(), "token_accuracy": accuracy,
                                             "masked_fraction": mask.mean()})
