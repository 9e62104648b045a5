"""Masked autoencoder (He et al. 2021) for any band count, 2D or 3D, with nodata pixels left out of the loss.

Numerically equal to HF ``ViTMAEForPreTraining`` given the same weights and noise (see the equivalence test):
same masking (argsort of noise, ``int(N * (1 - ratio))`` kept), same patch ordering, same loss.

:class:`MAE` reads top to bottom like the reference ``models_mae.py``: :meth:`~MAE.forward_encoder` (embed, mask,
encode the visible tokens), :meth:`~MAE.forward_decoder` (mask tokens back in, predict every token's pixels),
:meth:`~MAE.forward_loss` (MSE on the masked tokens), then :meth:`~MAE.forward`, the training step and previews.

Token layouts, one code path. ``plain`` and ``wavelength`` embeddings give one token per position that predicts
every band of its patch (``T = N``; targets in :func:`~geomed_ssl.methods.masking.patchify`'s order, HF's).
``grouped`` / ``spectral`` give ``U`` tokens per position (one per band group / chunk, unit-major, ``T = U * N``);
token ``(u, n)`` predicts unit ``u``'s own bands at patch ``n`` (:func:`~geomed_ssl.methods.masking.unit_patchify`),
so targets line up with tokens. The layout is data, not a second code path: ``units`` (each unit's input bands,
:meth:`MAE.units_for`; None for plain tokens) selects the targets and the decoder's unit embedding and heads
(:class:`~geomed_ssl.models.mae_decoder.MAEDecoder`). Masking is per token (``method.group_masking: independent``)
or per position (``consistent``: every unit of a position together). With ``method.channel_sampling`` (spectral,
wavelength) each step sees a random band subset (hierarchical sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MAX_DEPTH, MAX_EMBED_DIM, MAX_HEADS, MethodConfig, check_heads, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import (MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod,
                                     all_ranks, mean_over_ranks)
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.masking import (consistent_noise, mask_to_image, random_masking, sample_units, token_patchify,
                                        token_unpatchify, valid_values)
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.mae_decoder import DecoderUnits, MAEDecoder
from geomed_ssl.models.pos_embed import check_sincos_dim
from geomed_ssl.models.spectral import chunk_units, wavelength_sincos

NORM_PIX_EPS = 1e-6
UNIT_KINDS = ("grouped", "spectral")  # embeddings with several tokens (band groups / chunks) per position
CHANNEL_SAMPLING_KINDS = ("spectral", "wavelength")  # embeddings that read any band subset


@dataclass
class MAESettings(MethodSettings):
    """The ``method:`` keys of ``name: mae``."""

    mask_ratio: float = setting(0.75, "fraction of each window's tokens hidden from the encoder", bounds="(0, 1)")
    norm_pix_loss: bool = setting(True, "targets normalised per patch (mean 0, std 1)")
    decoder_embed_dim: int = setting(128, "decoder token width", bounds=f"[1, {MAX_EMBED_DIM}]")
    decoder_depth: int = setting(4, "decoder transformer blocks", bounds=f"[1, {MAX_DEPTH}]")
    decoder_num_heads: int = setting(4, "decoder attention heads (divide decoder_embed_dim)",
                                     bounds=f"[1, {MAX_HEADS}]")
    group_masking: str = setting("independent", "grouped / spectral embeddings: mask each token on its own "
                                 "(independent) or a position in every group at once (consistent)",
                                 choices=("independent", "consistent"))
    channel_sampling: bool = setting(False, "spectral / wavelength embeddings: each step reads a random band subset "
                                     "(hierarchical: a count, then the bands)")
    channel_sampling_min: int = setting(1, "fewest bands a channel_sampling step reads", bounds=">= 1")

    def check(self, source: str, context: MethodContext) -> None:
        check_heads(self.decoder_embed_dim, self.decoder_num_heads, "method.decoder_embed_dim",
                    "method.decoder_num_heads", source)
        if context.spatial_dims is not None:
            check_sincos_dim(self.decoder_embed_dim, context.spatial_dims, f"{source}: method.decoder_embed_dim")
        if self.channel_sampling and context.embedding not in (None, *CHANNEL_SAMPLING_KINDS):
            raise ConfigError(f"{source}: method.channel_sampling needs model.embedding=spectral or wavelength (a "
                              f"'{context.embedding}' embedding reads a fixed band set).")
        k = context.tokens_per_position
        if context.embedding in UNIT_KINDS and k is not None and k > 1:
            raise ConfigError(f"{source}: method mae predicts each band group's / chunk's bands from its own token, "
                              f"or every band from one token per position; model.tokens_per_position {k} gives "
                              "neither: set it to 1 or null.")
        if context.tokens is not None:
            kept = int(context.tokens * (1 - self.mask_ratio))
            if not 0 < kept < context.tokens:
                raise ConfigError(
                    f"{source}: method.mask_ratio {self.mask_ratio} {'hides every' if kept == 0 else 'hides no'} "
                    f"token of the {context.tokens} per window; pick a ratio that keeps some and hides some.")


@dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, T, prod(patch) * C) in the target's space (per-patch normalised if norm_pix_loss)
    mask: torch.Tensor  # (B, T) float, 1 = masked
    ids_restore: torch.Tensor  # (B, T); T = N tokens, or U * N for grouped/spectral (C then the largest unit's)
    grid: tuple[int, ...]
    units: list[list[int]] | None = None  # grouped/spectral: input channels of each unit (T = U * N tokens)


def patch_stats(target: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean and unbiased variance of ``target`` (B, T, V) -> (B, T, 1) each, over the values where
    ``weights`` (B, T, V) bool is True, or over all of them when it is None."""
    if weights is None:
        return target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    count = weights.sum(dim=-1, keepdim=True).to(target.dtype)  # (B, T, 1)
    mean = torch.where(weights, target, 0.0).sum(dim=-1, keepdim=True) / count.clamp_min(1)
    sq = torch.where(weights, (target - mean) ** 2, 0.0).sum(dim=-1, keepdim=True)
    return mean, sq / (count - 1).clamp_min(1)


@register_method
class MAE(SSLMethod):
    """Encoder on the visible ~25% of the tokens, light decoder on all, MSE on the masked tokens' pixels.

    Shapes: image (B, C, *S); N = prod(S // patch) positions; T = N tokens (plain) or U * N (U units per position);
    K = kept tokens; D encoder width; P = prod(patch); predictions and targets (B, T, P * c), c = C (plain) or the
    largest unit's band count.
    """

    name = "mae"  # views: the default, one crop (0.2-1 of the window), flips / rot90, no intensity ops
    card = MethodCard(
        learns="to fill in ~75 % hidden patches from the visible ones: every band of every pixel",
        cost="1x (the encoder sees a quarter of the tokens; a light decoder sees all)",
        failure_modes="blurry reconstructions are normal; CLS / mean features need fine-tuning more than "
                      "contrastive ones for linear probes; too small a decoder limits it",
        recipes=("recipes/mae_sentinel2.yaml", "recipes/mae_ct.yaml", "recipes/mae_mri.yaml"))
    Settings = MAESettings
    settings: MAESettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: MAESettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        m = self.settings
        self.mask_ratio = float(m.mask_ratio)
        self.norm_pix_loss = bool(m.norm_pix_loss)
        self.patch_size = tuple(encoder_cfg.patch_size)
        self.in_chans = encoder_cfg.in_chans
        self.kind = encoder_cfg.embedding
        # unit tokens (one per band group / chunk) predict their own bands; pooled ones (tokens_per_position 1)
        # are one token per position and predict every band, as plain
        self.unit_layout = self.kind in UNIT_KINDS and not encoder_cfg.pooled
        self.group_masking = m.group_masking
        self.channel_sampling = m.channel_sampling
        self.channel_sampling_min = m.channel_sampling_min
        self.encoder = ViTEncoder(encoder_cfg)
        self.decoder = self._build_decoder(encoder_cfg, m)

    def _build_decoder(self, cfg: EncoderConfig, m: MAESettings) -> MAEDecoder:
        """Plain tokens (plain, wavelength, pooled units): one head of every band. Grouped: a learned embedding and a
        head per group. Spectral: a channel table (learned, or sin-cos of the wavelengths) and one head shared by
        every chunk."""
        dims = (cfg.embed_dim, m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, cfg.grid,
                math.prod(self.patch_size))
        if not self.unit_layout:
            return MAEDecoder(*dims, [cfg.in_chans], cfg.mlp_ratio, cfg.norm_eps)
        if self.kind == "grouped":
            return MAEDecoder(*dims, [len(g) for g in cfg.band_groups], cfg.mlp_ratio, cfg.norm_eps,
                              unit_rows=len(cfg.band_groups))
        if self.kind == "spectral":
            fixed = wavelength_sincos(cfg.wavelengths, m.decoder_embed_dim) if cfg.channel_embed == "wavelength" \
                else None
            return MAEDecoder(*dims, [cfg.spectral_chunk], cfg.mlp_ratio, cfg.norm_eps, unit_rows=cfg.in_chans,
                              fixed_table=fixed)
        return MAEDecoder(*dims, [cfg.in_chans], cfg.mlp_ratio, cfg.norm_eps)

    def units_for(self, channels: int) -> list[list[int]] | None:
        """The input bands each token unit predicts, for an input of ``channels`` bands (grouped: the groups;
        spectral: chunks of them); None for plain tokens (and pooled units), which predict every band."""
        return self.encoder.units(channels) if self.unit_layout else None

    def forward_encoder(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                        channel_ids: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Embed ``x`` (B, c, *S), mask, and encode the visible tokens.

        ``noise``: (B, T) one value per token, or (B, N) one per position (every unit of a position masked together);
        None: drawn with ``torch.rand`` as ``method.group_masking`` says. ``channel_ids`` (spectral, wavelength): the
        encoder bands ``x`` holds. Returns ``latent`` (B, 1+K, D) CLS first, ``mask`` (B, T) float 1 = masked,
        ``ids_restore`` (B, T) and the token grid."""
        tokens, grid = self.encoder.embed(x, channel_ids)  # (B, T, D) with positions, unit-major
        n = math.prod(grid)
        noise, keep = self._token_noise(noise, x.shape[0], n, tokens.shape[1] // n, x.device)  # (B, T)
        kept, mask, ids_restore = random_masking(tokens, self.mask_ratio, noise, keep)  # (B, K, D), (B, T), (B, T)
        latent, _ = self.encoder.run_blocks(self.encoder.add_cls(kept))  # (B, 1+K, D)
        return latent, mask, ids_restore, grid

    def _token_noise(self, noise: torch.Tensor | None, batch: int, n: int, u: int, device: torch.device
                     ) -> tuple[torch.Tensor, int | None]:
        """Masking noise per token (B, U*N) and the tokens to keep (None: ``num_keep(U*N)``); per-position noise
        (B, N) is repeated over the units and keeps ``U * num_keep(N)`` tokens, whole positions."""
        if noise is None:
            noise = torch.rand(batch, n if self.group_masking == "consistent" else u * n, device=device)
        if noise.shape[1] == n and u > 1:
            return consistent_noise(noise, u, self.mask_ratio)
        if noise.shape[1] != u * n:
            expected = f"{n}" if u == 1 else f"{n} (per position) or {u * n} (per token)"
            raise ValueError(f"noise has {noise.shape[1]} values per sample; expected {expected}.")
        return noise, None

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...],
                        units: list[list[int]] | None = None, channel_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """``latent`` (B, 1+K, D), ``ids_restore`` (B, T) -> predicted pixels (B, T, P * c) of every token."""
        return self.decoder(latent, ids_restore, grid, self._decoder_units(units, channel_ids))

    def _decoder_units(self, units: list[list[int]] | None, channel_ids: torch.Tensor | None) -> DecoderUnits | None:
        """Grouped: group ``g`` embeds with row ``g`` and predicts with head ``g``. Spectral: a chunk embeds with the
        rows of its bands (encoder band ids, the table is the encoder's bands) and every chunk shares head 0."""
        if units is None:
            return None
        sizes = [len(u) for u in units]
        if self.kind == "grouped":
            return DecoderUnits([[g] for g in range(len(units))], list(range(len(units))), sizes)
        ids = None if channel_ids is None else channel_ids.tolist()  # the input's bands as encoder bands
        rows = [list(unit) if ids is None else [ids[c] for c in unit] for unit in units]
        return DecoderUnits(rows, [0] * len(units), sizes)

    def forward_loss(self, image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     valid: torch.Tensor | None = None, units: list[list[int]] | None = None) -> torch.Tensor:
        """MSE of ``pred`` (B, T, V) against the pixels of ``image`` (B, C, *S) on the masked tokens (``mask``
        (B, T), 1 = masked); targets per-token normalised with ``norm_pix_loss``; nodata (``valid`` (B, *S) False)
        and unit padding left out. In training the denominators are means over ranks (``methods.base``).

        Every value real and valid (plain tokens, no nodata): the paper's loss, the mean per token, then over masked
        tokens. Unit tokens with every pixel valid: the mean over each token's real values, then over masked tokens.
        Nodata present: the mean over every masked, real, valid value."""
        valid = None if valid is None else valid.bool()
        target, weights, all_valid = self.targets(image, valid, units)  # (B, T, V), (B, T, V) bool or None
        if self.norm_pix_loss:
            mean, var = patch_stats(target, weights)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        err = (pred - target) ** 2  # (B, T, V)
        if weights is None:
            return (err.mean(dim=-1) * mask).sum() / self._global(mask.sum())
        err = torch.where(weights, err, 0.0).sum(dim=-1)  # (B, T)
        count = weights.sum(dim=-1).to(err.dtype)  # (B, T) values that count per token
        if all_valid:
            return (err / count.clamp_min(1) * mask).sum() / self._global(mask.sum())
        return (err * mask).sum() / self._global((count * mask).sum()).clamp_min(1)

    def targets(self, image: torch.Tensor, valid: torch.Tensor | None, units: list[list[int]] | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """Pixel targets in token order, not normalised (B, T, V); the bool (B, T, V) weights of the values that
        count (real, not a unit's zero padding, and at valid pixels), None when all do (plain tokens, no nodata, so
        an all-valid batch gets the paper's loss bit for bit); and whether every pixel is valid (on every rank in
        training, so all ranks take the same loss formula; the check costs one host sync)."""
        target, real = token_patchify(image, self.patch_size, units)  # (B, T, V), (T, V) bool or None
        weights = None if real is None else real.expand_as(target)
        all_valid = self._everywhere(valid is None or bool(valid.all()), image.device)
        if not all_valid:
            u = 1 if units is None else len(units)
            pix = valid_values(valid, self.patch_size, u, target.shape[-1] // math.prod(self.patch_size))
            weights = pix if weights is None else weights & pix
        return target, weights, all_valid

    def forward(
        self, image: torch.Tensor, valid: torch.Tensor | None = None, noise: torch.Tensor | None = None,
        channel_ids: torch.Tensor | None = None,
    ) -> MAEOutput:
        """``image`` (B, C, *S), ``valid`` (B, *S) bool or None, ``noise`` (B, T) or (B, N) or None -> MAEOutput.

        ``channel_ids`` (spectral, wavelength): the encoder reads only these bands. Plain tokens (wavelength) still
        predict every band; unit tokens (spectral) the bands of their unit among those read."""
        if valid is not None:
            valid = valid.bool()
            image = torch.where(valid[:, None], image, 0.0)  # nodata never reaches the encoder
        x = image if channel_ids is None else image[:, channel_ids.to(image.device)]  # (B, c, *S) the bands read
        latent, mask, ids_restore, grid = self.forward_encoder(x, noise, channel_ids)
        units = self.units_for(x.shape[1])
        pred = self.forward_decoder(latent, ids_restore, grid, units, channel_ids)  # (B, T, P*c)
        loss = self.forward_loss(image if units is None else x, pred, mask, valid, units)
        return MAEOutput(loss=loss, pred=pred, mask=mask, ids_restore=ids_restore, grid=grid, units=units)

    def _everywhere(self, flag: bool, device: torch.device) -> bool:
        """In training, ``flag`` on every rank (so all ranks pick the same loss formula); else ``flag``."""
        return all_ranks(flag, device) if self.training else flag

    def _global(self, denominator: torch.Tensor) -> torch.Tensor:
        """In training, the mean over ranks of a loss denominator (see ``methods.base``); else itself."""
        return mean_over_ranks(denominator) if self.training else denominator

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        """One step's loss: the band subset (``channel_sampling``) from ``generator``, each sample's masking noise
        from its own stream (:class:`PerSample`: the sample's global index), drawn on the CPU then moved."""
        image, valid = batch["image"], batch.get("valid")
        grid = self.encoder.patch_embed.grid_for(tuple(image.shape[2:]))
        channel_ids = self.sample_channels(generator) if self.channel_sampling else None
        units = self.units_for(self.in_chans if channel_ids is None else len(channel_ids))
        n = math.prod(grid)
        if units is not None and self.group_masking == "independent":
            n *= len(units)
        noise = PerSample.from_batch(batch, generator, image.shape[0]).rand(n)  # (B, n): sample i's own draws
        out = self(image, valid, noise.to(image.device), channel_ids)
        logs = {"recon_loss": out.loss.detach()}
        if channel_ids is not None:
            logs["bands_seen"] = torch.tensor(float(len(channel_ids)))
        if valid is not None:
            logs["valid_fraction"] = valid.float().mean()
        return MethodOutput(loss=out.loss, logs=logs)

    def sample_channels(self, generator: torch.Generator | None) -> torch.Tensor:
        """A random band subset (CPU long tensor, sorted): hierarchical sampling over bands (wavelength) or over
        whole chunks of ``model.spectral_chunk`` adjacent bands (spectral), at least ``channel_sampling_min`` bands."""
        chunk = self.encoder_cfg.spectral_chunk if self.kind == "spectral" else 1
        units = chunk_units(self.in_chans, chunk)
        sizes = sorted(len(u) for u in units)  # fewest units that hold the minimum, whichever are drawn
        fewest = next((i + 1 for i in range(len(sizes)) if sum(sizes[: i + 1]) >= self.channel_sampling_min),
                      len(units))
        chosen = sample_units(len(units), fewest, generator)
        return torch.tensor([c for u in chosen.tolist() for c in units[u]], dtype=torch.long)

    @torch.no_grad()
    def reconstruct(
        self, image: torch.Tensor, valid: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """For previews, in eval mode: ``pred_image`` (B, C, *S) in the input's normalised space (norm_pix undone
        with each target token's mean/var; bands no unit predicts stay 0), ``mask_image`` (B, *S) bool True where
        masked (a position with units: where at least half of its tokens are), ``loss`` scalar."""
        was_training = self.training
        self.eval()  # also keeps the loss local: previews run on rank 0 alone
        try:
            return self._reconstruct(image, valid, noise)
        finally:
            self.train(was_training)

    def _reconstruct(self, image: torch.Tensor, valid: torch.Tensor | None,
                     noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = self(image, valid, noise)
        pred = out.pred  # (B, T, P*c)
        if self.norm_pix_loss:
            valid = None if valid is None else valid.bool()
            clean = image if valid is None else torch.where(valid[:, None], image, 0.0)
            target, weights, _ = self.targets(clean, valid, out.units)
            mean, var = patch_stats(target, weights)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        u = 1 if out.units is None else len(out.units)
        masked = out.mask.unflatten(1, (u, -1)).mean(dim=1) >= 0.5  # (B, N)
        return {
            "pred_image": token_unpatchify(pred, self.patch_size, out.grid, out.units, self.in_chans),
            "mask_image": mask_to_image(masked, self.patch_size, out.grid),
            "loss": out.loss,
        }

    def export_encoder(self) -> ViTEncoder:
        return self.encoder
