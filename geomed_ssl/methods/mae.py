"""Masked autoencoder (He et al. 2021) for any band count, 2D or 3D, with nodata pixels left out of the loss.

Numerically equal to HF ``ViTMAEForPreTraining`` given the same weights and noise (see the equivalence test):
same masking (argsort of noise, ``int(N * (1 - ratio))`` kept), same patch ordering, same loss.

Spectral-aware embeddings: ``wavelength`` masks and predicts like ``plain`` (all bands of each patch).
``grouped`` / ``spectral`` have ``U`` tokens per position (one per band group / chunk): masking is per token
(``method.group_masking: independent``) or per position (``consistent``), and the decoder
(:class:`UnitMAEDecoder`) predicts each token's own bands, so targets line up with tokens. With
``method.channel_sampling`` (spectral, wavelength) each step sees a random band subset (hierarchical sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.config import MAX_DEPTH, MAX_EMBED_DIM, MAX_HEADS, MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import (MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod,
                                     all_ranks, mean_over_ranks)
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.masking import (consistent_noise, mask_to_image, patchify, random_masking, sample_units,
                                        unit_patchify, unit_unpatchify, unpatchify)
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder, grid_pos_embed, init_mae_weights, make_blocks
from geomed_ssl.models.mae_decoder import MAEDecoder
from geomed_ssl.models.pos_embed import axis_dims, sincos_pos_embed
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
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ConfigError(f"{source}: method.decoder_embed_dim ({self.decoder_embed_dim}) must be divisible by "
                              f"method.decoder_num_heads ({self.decoder_num_heads}).")
        if context.spatial_dims is not None:
            try:
                axis_dims(self.decoder_embed_dim, context.spatial_dims)
            except ValueError as err:
                raise ConfigError(f"{source}: method.decoder_embed_dim: {err}") from None
        if self.channel_sampling and context.embedding not in (None, *CHANNEL_SAMPLING_KINDS):
            raise ConfigError(f"{source}: method.channel_sampling needs model.embedding=spectral or wavelength (a "
                              f"'{context.embedding}' embedding reads a fixed band set).")
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


class UnitMAEDecoder(nn.Module):
    """MAE decoder for unit-major tokens (B, 1+K, E) -> (B, U*N, prod(patch) * cmax): mask tokens, spatial sin-cos
    plus a unit embedding (the mean of its rows of a learned table, or a fixed wavelength sin-cos table), timm
    blocks, and per-unit prediction heads (one per group, or one shared by every chunk) giving each token the
    pixels of its own bands, channel-last and zero-padded to the largest unit (``cmax``)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, grid: tuple[int, ...], table_rows: int,
                 head_channels: list[int], patch_numel: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 fixed_table: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dim, self.grid, self.patch_numel = dim, tuple(grid), patch_numel
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(self.grid, dim, cls_token=True)[None])  # (1, 1+N, d)
        if fixed_table is None:
            self.unit_embed = nn.Parameter(torch.zeros(table_rows, dim))  # (R, d)
        else:
            self.register_buffer("unit_table", fixed_table, persistent=False)  # (R, d)
        self.blocks = make_blocks(dim, depth, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pred = nn.ModuleList(nn.Linear(dim, patch_numel * c) for c in head_channels)
        init_mae_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)
        if fixed_table is None:
            nn.init.normal_(self.unit_embed, std=0.02)

    def unit_embedding(self, unit_rows: list[list[int]]) -> torch.Tensor:
        """(U, d): the mean of each unit's rows of the table."""
        table = self.unit_embed if hasattr(self, "unit_embed") else self.unit_table
        avg = torch.zeros(len(unit_rows), table.shape[0])
        for u, rows in enumerate(unit_rows):
            avg[u, rows] = 1.0 / len(rows)
        return avg.to(device=table.device, dtype=table.dtype) @ table

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...],
                unit_rows: list[list[int]], unit_heads: list[int], unit_sizes: list[int]) -> torch.Tensor:
        """``latent`` (B, 1+K, E) CLS first, ``ids_restore`` (B, U*N) -> predictions (B, U*N, P*cmax)."""
        x = self.embed(latent)  # (B, 1+K, d)
        b, t = ids_restore.shape
        u, n = len(unit_rows), t // len(unit_rows)
        masks = self.mask_token.to(x.dtype).expand(b, t + 1 - x.shape[1], -1)  # (B, T-K, d)
        seq = torch.cat([x[:, 1:], masks], dim=1)  # (B, T, d) shuffled order
        seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, self.dim))  # (B, T, d) token order
        pos = self.pos_embed[:, 1:] if tuple(grid) == self.grid else grid_pos_embed(grid, self.dim, x)  # (1, N, d)
        unit = self.unit_embedding(unit_rows)  # (U, d)
        pos = (pos.to(x.dtype)[:, None] + unit.to(x.dtype)[None, :, None]).flatten(1, 2)  # (1, U*N, d)
        x = torch.cat([x[:, :1], seq + pos], dim=1)  # (B, 1+T, d); the CLS position is zero
        for blk in self.blocks:
            x = blk(x)
        h = self.norm(x[:, 1:]).unflatten(1, (u, n))  # (B, U, N, d)
        cmax = max(unit_sizes)
        if len(set(unit_heads)) == 1:  # one shared head (spectral): all units at once
            out = self.pred[unit_heads[0]](h).unflatten(-1, (self.patch_numel, -1))[..., :cmax]  # (B, U, N, P, cmax)
        else:
            parts = [self.pred[hd](h[:, i]).unflatten(-1, (self.patch_numel, -1)) for i, hd in enumerate(unit_heads)]
            out = torch.stack([F.pad(o, (0, cmax - o.shape[-1])) for o in parts], dim=1)  # (B, U, N, P, cmax)
        return out.flatten(3).flatten(1, 2)  # (B, U*N, P*cmax)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token", "unit_embed"} if hasattr(self, "unit_embed") else {"pos_embed", "mask_token"}


@register_method
class MAE(SSLMethod):
    """Encoder on the visible ~25% of patches, light decoder on all, MSE on the masked patches' pixels."""

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
        self.group_masking = m.group_masking
        self.channel_sampling = m.channel_sampling
        self.channel_sampling_min = m.channel_sampling_min
        self.encoder = ViTEncoder(encoder_cfg)
        if self.kind in UNIT_KINDS:
            self.decoder = self._unit_decoder(encoder_cfg, m)
            return
        self.decoder = MAEDecoder(
            in_dim=encoder_cfg.embed_dim,
            dim=m.decoder_embed_dim,
            depth=m.decoder_depth,
            num_heads=m.decoder_num_heads,
            out_dim=math.prod(self.patch_size) * encoder_cfg.in_chans,
            grid=encoder_cfg.grid,
            mlp_ratio=encoder_cfg.mlp_ratio,
            norm_eps=encoder_cfg.norm_eps,
        )

    def _unit_decoder(self, cfg: EncoderConfig, m: MAESettings) -> UnitMAEDecoder:
        """Grouped: a learned embedding and a head per group. Spectral: a channel table (learned, or sin-cos of the
        wavelengths) and one head shared by every chunk."""
        if self.kind == "grouped":
            rows, heads, fixed = len(cfg.band_groups), [len(g) for g in cfg.band_groups], None
        else:
            rows, heads = cfg.in_chans, [cfg.spectral_chunk]
            wave = cfg.channel_embed == "wavelength"
            fixed = wavelength_sincos(cfg.wavelengths, m.decoder_embed_dim) if wave else None
        return UnitMAEDecoder(cfg.embed_dim, m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, cfg.grid, rows,
                              heads, math.prod(self.patch_size), cfg.mlp_ratio, cfg.norm_eps, fixed)

    def forward(
        self, image: torch.Tensor, valid: torch.Tensor | None = None, noise: torch.Tensor | None = None,
        channel_ids: torch.Tensor | None = None,
    ) -> MAEOutput:
        """``image`` (B, C, *S), ``valid`` (B, *S) bool or None, ``noise`` (B, N) or None -> MAEOutput.

        Grouped/spectral: ``noise`` (B, U*N) masks each token on its own, (B, N) whole positions (what
        ``method.group_masking`` draws in training; previews pass (B, N)). ``channel_ids`` (spectral, wavelength):
        the encoder reads only these bands; plain-style targets (wavelength) stay all bands."""
        if valid is not None:
            valid = valid.bool()
            image = torch.where(valid[:, None], image, 0.0)  # nodata never reaches the encoder
        if self.kind in UNIT_KINDS:
            return self._forward_units(image, valid, noise, channel_ids)
        if channel_ids is None:
            tokens, grid = self.encoder.embed(image)  # (B, N, D)
        else:
            tokens, grid = self.encoder.embed(image[:, channel_ids.to(image.device)], channel_ids)
        kept, mask, ids_restore = random_masking(tokens, self.mask_ratio, noise)  # (B, K, D), (B, N), (B, N)
        latent, _ = self.encoder.run_blocks(self.encoder.add_cls(kept))  # (B, 1+K, D)
        pred = self.decoder(latent, ids_restore, grid)  # (B, N, P*C)
        loss = self.loss(image, pred, mask, valid)
        return MAEOutput(loss=loss, pred=pred, mask=mask, ids_restore=ids_restore, grid=grid)

    def _forward_units(self, image: torch.Tensor, valid: torch.Tensor | None, noise: torch.Tensor | None,
                       channel_ids: torch.Tensor | None) -> MAEOutput:
        x = image if channel_ids is None else image[:, channel_ids.to(image.device)]  # (B, c, *S)
        tokens, grid = self.encoder.embed(x, channel_ids)  # (B, U*N, D) unit-major
        units = self.encoder.units(x.shape[1])
        n, keep = math.prod(grid), None
        if noise is None:
            noise = torch.rand(x.shape[0], n if self.group_masking == "consistent" else len(units) * n,
                               device=x.device)
        if noise.shape[1] == n and len(units) > 1:  # one value per position: whole positions masked
            noise, keep = consistent_noise(noise, len(units), self.mask_ratio)  # (B, U*N)
        elif noise.shape[1] != len(units) * n:
            raise ValueError(f"noise has {noise.shape[1]} values per sample; expected {n} (per position) or "
                             f"{len(units) * n} (per token).")
        kept, mask, ids_restore = random_masking(tokens, self.mask_ratio, noise, keep)  # (B, K, D), (B, U*N) x2
        latent, _ = self.encoder.run_blocks(self.encoder.add_cls(kept))  # (B, 1+K, D)
        if self.kind == "grouped":
            rows, heads = [[g] for g in range(len(units))], list(range(len(units)))
        else:  # the decoder's channel table is indexed by encoder band
            ids = list(range(x.shape[1])) if channel_ids is None else channel_ids.tolist()
            rows, heads = [[ids[c] for c in unit] for unit in units], [0] * len(units)
        pred = self.decoder(latent, ids_restore, grid, rows, heads, [len(u) for u in units])  # (B, U*N, P*cmax)
        target, weights, all_valid = self._unit_targets(x, valid, units)
        loss = self._masked_mse(pred, target, weights, mask, all_valid)
        return MAEOutput(loss=loss, pred=pred, mask=mask, ids_restore=ids_restore, grid=grid, units=units)

    def _unit_targets(self, x: torch.Tensor, valid: torch.Tensor | None, units: list[list[int]],
                      normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Each token's own bands (B, U*N, P*cmax), the bool weights of its real, valid values, and whether every
        pixel is valid; targets are per-token normalised with ``norm_pix_loss`` (unless ``normalise`` is False)."""
        target, real = unit_patchify(x, self.patch_size, units)  # (B, T, V), (T, V)
        weights = real.expand_as(target)
        all_valid = self._everywhere(valid is None or bool(valid.all()), x.device)
        if not all_valid:
            pix = patchify(valid[:, None], self.patch_size)  # (B, N, P)
            cmax = target.shape[-1] // pix.shape[-1]
            pix = pix[:, None, :, :, None].expand(-1, len(units), -1, -1, cmax).reshape(target.shape)  # (B, T, V)
            weights = weights & pix
        if self.norm_pix_loss and normalise:
            mean, var = self._patch_stats(target, weights)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        return target, weights, all_valid

    def _masked_mse(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
                    all_valid: bool) -> torch.Tensor:
        """Mean over masked tokens of each token's mean squared error over its weighted values (all pixels valid),
        else the mean over every masked valid value (as the plain loss); over the global batch in training."""
        err = torch.where(weights, (pred - target) ** 2, 0.0).sum(dim=-1)  # (B, T)
        count = weights.sum(dim=-1).to(err.dtype)  # (B, T)
        if all_valid:
            return (err / count.clamp_min(1) * mask).sum() / self._global(mask.sum())
        return (err * mask).sum() / self._global((count * mask).sum()).clamp_min(1)

    def _everywhere(self, flag: bool, device: torch.device) -> bool:
        """In training, ``flag`` on every rank (so all ranks pick the same loss formula); else ``flag``."""
        return all_ranks(flag, device) if self.training else flag

    def _global(self, denominator: torch.Tensor) -> torch.Tensor:
        """In training, the mean over ranks of a loss denominator (see ``methods.base``); else itself."""
        return mean_over_ranks(denominator) if self.training else denominator

    def _pixel_weights(self, image: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """(B, N, P*C) bool, True on valid pixels; None when every pixel is valid, so an all-valid batch gets the
        paper's loss bit for bit (the check costs one host sync)."""
        if self._everywhere(valid is None or bool(valid.all()), image.device):
            return None
        return patchify(valid[:, None].expand_as(image), self.patch_size)

    @staticmethod
    def _patch_stats(target: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch mean and unbiased variance (B, N, 1), over valid values only when ``weights`` is given."""
        if weights is None:
            return target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        count = weights.sum(dim=-1, keepdim=True).to(target.dtype)  # (B, N, 1)
        mean = torch.where(weights, target, 0.0).sum(dim=-1, keepdim=True) / count.clamp_min(1)
        sq = torch.where(weights, (target - mean) ** 2, 0.0).sum(dim=-1, keepdim=True)
        return mean, sq / (count - 1).clamp_min(1)

    def loss(
        self, image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE on masked patches, per-patch normalised targets if ``norm_pix_loss``, nodata pixels left out."""
        target = patchify(image, self.patch_size)  # (B, N, P*C)
        weights = self._pixel_weights(image, valid)
        if self.norm_pix_loss:
            mean, var = self._patch_stats(target, weights)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        err = (pred - target) ** 2  # (B, N, P*C)
        if weights is None:
            per_patch = err.mean(dim=-1)  # (B, N)
            return (per_patch * mask).sum() / self._global(mask.sum())
        per_patch = torch.where(weights, err, 0.0).sum(dim=-1)  # (B, N)
        count = weights.sum(dim=-1).to(err.dtype)  # (B, N) valid values per patch
        return (per_patch * mask).sum() / self._global((count * mask).sum()).clamp_min(1)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        """One step's loss: the band subset (``channel_sampling``) from ``generator``, each sample's masking noise
        from its own stream (:class:`PerSample`: the sample's global index), drawn on the CPU then moved."""
        image, valid = batch["image"], batch.get("valid")
        grid = self.encoder.patch_embed.grid_for(tuple(image.shape[2:]))
        channel_ids = self.sample_channels(generator) if self.channel_sampling else None
        n = math.prod(grid)
        if self.kind in UNIT_KINDS and self.group_masking == "independent":
            n *= len(self.encoder.units(self.in_chans if channel_ids is None else len(channel_ids)))
        noise = PerSample.from_batch(batch, generator, image.shape[0]).rand(n)  # (B, n): sample i's own draws
        if channel_ids is None:
            out = self(image, valid, noise.to(image.device))
        else:
            out = self(image, valid, noise.to(image.device), channel_ids=channel_ids)
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
        with each target patch's mean/var), ``mask_image`` (B, *S) bool True where masked, ``loss`` scalar."""
        was_training = self.training
        self.eval()  # also keeps the loss local: previews run on rank 0 alone
        try:
            return self._reconstruct(image, valid, noise)
        finally:
            self.train(was_training)

    def _reconstruct(self, image: torch.Tensor, valid: torch.Tensor | None,
                     noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = self(image, valid, noise)
        pred = out.pred
        if out.units is not None:
            return self._reconstruct_units(image, valid, out)
        if self.norm_pix_loss:
            valid = None if valid is None else valid.bool()
            clean = image if valid is None else torch.where(valid[:, None], image, 0.0)
            target = patchify(clean, self.patch_size)
            mean, var = self._patch_stats(target, self._pixel_weights(clean, valid))
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        return {
            "pred_image": unpatchify(pred, self.patch_size, out.grid, self.in_chans),
            "mask_image": mask_to_image(out.mask, self.patch_size, out.grid),
            "loss": out.loss,
        }

    def _reconstruct_units(self, image: torch.Tensor, valid: torch.Tensor | None,
                           out: MAEOutput) -> dict[str, torch.Tensor]:
        """Previews for grouped/spectral: each token's bands put back in place (bands in no group stay 0); a
        position shows as masked when at least half of its tokens are."""
        pred, units = out.pred, out.units
        if self.norm_pix_loss:
            valid = None if valid is None else valid.bool()
            clean = image if valid is None else torch.where(valid[:, None], image, 0.0)
            target, weights, _ = self._unit_targets(clean, valid, units, normalise=False)
            mean, var = self._patch_stats(target, weights)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        masked = out.mask.unflatten(1, (len(units), -1)).mean(dim=1) >= 0.5  # (B, N)
        return {
            "pred_image": unit_unpatchify(pred, self.patch_size, out.grid, units, self.in_chans),
            "mask_image": mask_to_image(masked, self.patch_size, out.grid),
            "loss": out.loss,
        }

    def export_encoder(self) -> ViTEncoder:
        return self.encoder
