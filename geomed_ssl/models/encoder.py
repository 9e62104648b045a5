"""The ViT encoder: patch embedding + fixed sin-cos positions + CLS token + timm ``Block``s, 2D or 3D.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i``, ``norm``), so for a ``plain`` 2D encoder the timm export (:func:`geomed_ssl.export.export_timm`,
``geomed-ssl export --format timm``) is a plain state-dict copy; ``tests/test_export.py`` checks timm's features.

Position embeddings are fixed sin-cos built for ``cfg.img_size``'s grid (the ``pos_embed`` buffer, with a zero
CLS row like MAE/timm). Inputs of another size get the sin-cos embedding *recomputed* for their grid rather than
interpolated: token ``k`` keeps position ``k`` at the same patch spacing, which is what a larger window at the same
resolution means (``pos_embed.interpolate_pos_embed`` is there for learned embeddings).

Spectral-aware embeddings (``grouped``, ``spectral``: see :mod:`geomed_ssl.models.spectral`) give ``U`` tokens per
spatial position (unit-major, ``T = U * N``); the spatial sin-cos is added to each, the group/channel embedding
comes from the patch embedding. ``forward`` and ``forward_features`` merge them back to one token per position
(the mean over units), so heads and decoders always see the spatial grid. With ``tokens_per_position: k`` a
:class:`~geomed_ssl.models.spectral.UnitPool` (``unit_pool``) pools the ``U`` unit tokens of each position into
``k`` before the positions are added, so the blocks see ``k * N`` tokens (``k = 1``: plain's cost).
``select_bands`` turns a ``spectral`` or ``wavelength`` encoder into one for another band set.

Its configuration (:class:`EncoderConfig`) is in :mod:`geomed_ssl.models.encoder_config`, the timm block stack and
MAE init in :mod:`geomed_ssl.models.blocks`, the cached sin-cos positions in :mod:`geomed_ssl.models.pos_embed`;
all are importable from here as before.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Any

import torch
from torch import nn

from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.blocks import init_mae_weights, make_blocks
from geomed_ssl.models.encoder_config import BAND_FLEXIBLE, MAX_SIDE, EncoderConfig, check_encoder_bands
from geomed_ssl.models.patch_embed import build_patch_embed
from geomed_ssl.models.pos_embed import grid_pos_embed, sincos_pos_embed
from geomed_ssl.models.spectral import UnitPool, describe_matches, match_bands, matched_bandwidths, subset_stats

__all__ = ["BAND_FLEXIBLE", "MAX_SIDE", "EncoderConfig", "ViTEncoder", "check_encoder_bands", "grid_pos_embed",
           "init_mae_weights", "make_blocks"]  # the config and shared pieces live in their own files
log = logging.getLogger("geomed_ssl")


def _autocasting(device_type: str) -> bool:
    """Autocast is on for ``device_type`` (it casts the inputs of each op itself)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


class ViTEncoder(nn.Module):
    """ViT over 2D or 3D token grids; any band count, window and patch size."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = build_patch_embed(cfg)
        if cfg.pooled:  # grouped / spectral with tokens_per_position: k tokens per position instead of U
            self.unit_pool = UnitPool(dim, cfg.tokens_per_position, cfg.num_heads, cfg.norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(cfg.grid, dim, cls_token=True)[None])  # (1, 1+N, D)
        self.blocks = make_blocks(dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps,
                                  cfg.drop_path)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        # the run's data settings (nodata; volumes: intensity, ct_window) that ``preprocess`` follows; set by
        # ``load_encoder`` from the export, None for an encoder built in code
        self.data_settings: dict[str, Any] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE init: xavier linears, patch-embed weight xavier on its (D, C*prod(patch)) view, cls normal(.02)."""
        init_mae_weights(self)
        if self.cfg.embedding == "plain":
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        else:
            self.patch_embed.reset_parameters()
        if hasattr(self, "unit_pool"):
            self.unit_pool.reset_parameters()
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def config(self) -> EncoderConfig:
        """The encoder's config: bands, wavelengths, normalisation statistics, patch size, architecture."""
        return self.cfg

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def preprocess(self, array: Any, nodata: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw values as read from the files (numpy or torch, (C, *S) or (B, C, *S), the encoder's bands in its
        order) -> ``(x, valid)``: float32 (B, C, *S) normalised exactly as in training, ready for ``self(x)``, and
        the bool (B, *S) mask of pixels that are not nodata/NaN, both on the encoder's device.

        ``nodata``: the files' nodata value (default: the run's ``data.nodata``). Volumes get the run's intensity
        step first and are scaled on their own values: pass whole volumes in RAS orientation at the run's spacing.
        """
        from geomed_ssl.data.inputs import prepare_input

        image, valid = prepare_input(array, self.cfg.stats, self.cfg.spatial_dims, nodata, self.data_settings)
        device = self.cls_token.device
        return torch.from_numpy(image).to(device), torch.from_numpy(valid).to(device)

    def pos_embed_for(self, grid: tuple[int, ...], ref: torch.Tensor) -> torch.Tensor:
        """``(1, N, D)`` spatial positions for ``grid`` (the buffer for the config's grid, else recomputed)."""
        if tuple(grid) == self.cfg.grid:
            return self.pos_embed[:, 1:].to(ref.dtype)
        return grid_pos_embed(grid, self.embed_dim, ref)

    def embed(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, C, *S) -> tokens (B, T, D) with positions added, and the spatial grid. ``T = N`` for plain and
        wavelength, ``U * N`` (unit-major) for grouped and spectral, ``k * N`` when ``tokens_per_position`` pools
        their units. ``channel_ids`` (spectral, wavelength): ``x`` holds only these of the encoder's bands, in this
        order (random band subsets during pretraining)."""
        weights = self.cls_token.dtype
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or (x.dtype != weights and (
                not _autocasting(x.device.type) or torch.float64 in (x.dtype, weights))):  # autocast casts no double
            what = type(x).__name__ if not isinstance(x, torch.Tensor) else f"a {x.dtype} tensor"
            cast = "" if weights == torch.float32 else f", then x.to({weights})"
            raise DataError(f"the encoder takes a {str(weights).removeprefix('torch.')} torch tensor (B, C, *S) "
                            f"normalised as in training (its weights' type), got {what}: x, valid = "
                            f"enc.preprocess(raw_values) gives it{cast}.")
        if hasattr(self, "unit_pool"):
            tokens, grid = self.patch_embed(x, channel_ids, by_position=True)  # (B, N, U, D)
            tokens = self.unit_pool(tokens)  # (B, k*N, D)
        elif channel_ids is None:
            tokens, grid = self.patch_embed(x)  # (B, T, D)
        else:
            tokens, grid = self.patch_embed(x, channel_ids)
        pos = self.pos_embed_for(grid, tokens)  # (1, N, D)
        if tokens.shape[1] != pos.shape[1]:
            pos = pos.repeat(1, tokens.shape[1] // pos.shape[1], 1)  # (1, U*N, D): each unit at every position
        return tokens + pos, grid

    def spatial_tokens(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Unit-major tokens (B, U*N, D) -> one per position (B, N, D), the mean over units; (B, N, D) unchanged."""
        n = math.prod(grid)
        if tokens.shape[1] == n:
            return tokens
        if tokens.shape[1] % n:
            raise ValueError(f"{tokens.shape[1]} tokens do not split into units of the {tuple(grid)} grid.")
        return tokens.unflatten(1, (-1, n)).mean(dim=1)

    def units(self, num_channels: int | None = None) -> list[list[int]]:
        """Input channels read by each spectral unit (token group): the band groups (grouped), the band chunks
        (spectral; of an input with ``num_channels`` bands), or one unit of all bands (plain, wavelength). With a
        ``unit_pool`` these are what it pools, not the tokens the blocks see."""
        return self.patch_embed.units(num_channels)

    def add_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the CLS token (plus its zero position): (B, N, D) -> (B, 1+N, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _layer_ids(self, layers: int | list[int] | tuple[int, ...] | None) -> list[int]:
        depth = len(self.blocks)
        ids = []
        one = isinstance(layers, numbers.Integral) and not isinstance(layers, bool)  # (numpy / torch ints too)
        for i in [layers] if one else layers or []:
            if not isinstance(i, numbers.Integral) or isinstance(i, bool):
                raise ConfigError(f"encoder layers are block numbers (0..{depth - 1}, or negative from the end), got "
                                  f"{layers!r}.")
            i = int(i)
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ConfigError(f"encoder layer {i} does not exist; the encoder has {depth} blocks (0..{depth - 1}).")
            ids.append(j)
        return ids

    def run_blocks(
        self, tokens: torch.Tensor, layers: list[int] | tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run all blocks on (B, T, D): the normed final tokens and the raw outputs of the chosen 0-based blocks
        (negative indices count from the end), in the order asked."""
        ids = self._layer_ids(layers)
        saved: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in ids:
                saved[i] = tokens
        return self.norm(tokens), [saved[i] for i in ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *S) -> normed tokens (B, 1+N, D), CLS first."""
        return self.forward_with_taps(x)[0]

    def forward_with_taps(
        self, x: torch.Tensor, layers: list[int] | tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, ...]]:
        """One full pass: ``forward``'s normed tokens (B, 1+N, D), the spatial tokens (B, N, D) of the chosen blocks
        as :meth:`forward_features` gives them (raw block outputs, CLS dropped, units merged), and the token grid."""
        tokens, grid = self.embed(x)
        out, taps = self.run_blocks(self.add_cls(tokens), layers)
        if out.shape[1] - 1 != math.prod(grid):
            out = torch.cat([out[:, :1], self.spatial_tokens(out[:, 1:], grid)], dim=1)  # (B, 1+N, D)
        return out, [self.spatial_tokens(t[:, 1:], grid) for t in taps], grid

    def forward_features(
        self, x: torch.Tensor, layers: int | list[int] | tuple[int, ...]
    ) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        """Spatial tokens (B, N, D) of the chosen blocks (raw block outputs, CLS dropped, units merged by their
        mean) and the token grid. Blocks after the last one asked for are not run."""
        ids = self._layer_ids(layers)
        tokens, grid = self.embed(x)
        tokens = self.add_cls(tokens)  # (B, 1+N, D)
        saved: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(ids, default=-1) + 1]):
            tokens = blk(tokens)
            if i in ids:
                saved[i] = self.spatial_tokens(tokens[:, 1:], grid)
        return [saved[i] for i in ids], grid

    def no_weight_decay(self) -> set[str]:
        """Names the optimiser should not decay (norms and biases are caught by ndim <= 1 in the trainer)."""
        names = {"pos_embed", "cls_token"}
        if hasattr(self, "unit_pool"):
            names |= {f"unit_pool.{n}" for n in self.unit_pool.no_weight_decay()}
        return names | {f"patch_embed.{n}" for n in ("group_embed", "channel_embed") if hasattr(self.patch_embed, n)}

    def select_bands(self, band_names: list[str], wavelengths: list[float | None] | None = None,
                     bandwidths: list[float | None] | None = None) -> ViTEncoder:
        """This encoder for data holding ``band_names`` (with their centre wavelengths and widths in µm, when known).

        Same bands in the same order: ``self``. Otherwise only ``spectral`` and ``wavelength`` embeddings can run:
        each band is matched to an encoder band by name, else by the nearest wavelength (within 15 nm or 2 %), and the
        mapping is logged. The result is a new encoder sharing no state with this one, whose config has the new
        bands, their wavelengths and widths (the data's, else the matched band's) and the matched bands' statistics
        renamed to the data's band names; its generated conv (wavelength) or channel-embedding rows (spectral) are
        those of the matched bands / wavelengths, never zero-filled. ``plain`` and ``grouped`` raise a DataError
        unless the bands are the encoder's in its order (``check_encoder_bands``; the commands order them by name
        first)."""
        cfg = self.cfg
        names = [str(n) for n in band_names]
        if names == list(cfg.band_names) and (wavelengths is None or list(wavelengths) == list(cfg.wavelengths or [])) \
                and (bandwidths is None or list(bandwidths) == list(cfg.bandwidths or [])):
            return self
        if cfg.embedding not in BAND_FLEXIBLE:
            check_encoder_bands(cfg, names)
            return self  # same names, other wavelengths: the conv does not read them
        matches = match_bands(cfg.band_names, cfg.wavelengths, names, wavelengths)
        log.info("encoder bands for this data (%s embedding):\n%s", cfg.embedding,
                 describe_matches(matches, cfg.band_names, cfg.wavelengths))
        learned = cfg.embedding == "spectral" and cfg.channel_embed == "learned"
        needs_match = learned or cfg.stats is not None
        unmatched = [m.name for m in matches if m.index is None and (needs_match or m.wavelength is None)]
        if unmatched:
            raise DataError(
                f"bands {unmatched} match none of the encoder's bands ({' '.join(cfg.band_names)}) by name or by "
                f"centre wavelength (within 15 nm or 2 %); drop them from the data (data.band_names / a band subset) "
                "or give their wavelengths (data.sensor or data.wavelengths)."
            )
        new = dataclasses.replace(
            cfg, in_chans=len(names), band_names=names,
            wavelengths=None if all(m.wavelength is None for m in matches) else [m.wavelength for m in matches],
            bandwidths=matched_bandwidths(cfg.bandwidths, matches, bandwidths),
            stats=subset_stats(cfg.stats, cfg.band_names, matches),
        )
        state = self.state_dict()
        if learned:
            idx = torch.tensor([m.index for m in matches])
            state["patch_embed.channel_embed"] = state["patch_embed.channel_embed"][idx]
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the global RNG alone
            out = ViTEncoder(new)
        out.load_state_dict(state)
        out.data_settings = self.data_settings
        out = out.to(next(self.parameters()).device)
        return out.train(self.training)
