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
(the mean over units), so heads and decoders always see the spatial grid. ``select_bands`` turns a ``spectral`` or
``wavelength`` encoder into one for another band set.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from geomed_ssl.config import (CHANNEL_EMBEDS, EMBEDDINGS, MAX_CHANNELS, MAX_DEPTH, MAX_EMBED_DIM, MAX_HEADS,
                               MAX_MLP_RATIO, MAX_PATCH, DataConfig, ModelConfig, as_tuple, check_heads, check_instance,
                               check_values, check_window, setting, spatial_dims)
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.patch_embed import build_patch_embed
from geomed_ssl.models.pos_embed import check_sincos_dim, sincos_pos_embed
from geomed_ssl.models.spectral import (default_band_groups, describe_matches, match_bands, matched_bandwidths,
                                        resolve_band_groups, subset_stats)
from geomed_ssl.models.tokens import token_grid

log = logging.getLogger("geomed_ssl")
BAND_FLEXIBLE = ("spectral", "wavelength")  # embeddings that run on other band sets


def check_encoder_bands(cfg: EncoderConfig, band_names: list[str], where: str = "the data") -> None:
    """For embeddings tied to their training bands (plain, grouped): a DataError unless ``band_names`` are the
    encoder's, in order. Missing bands are named; the same bands in another order (or with extra ones) must be
    brought to the encoder's order first (``geomed_ssl.data.conform.conform_catalog``: every command does)."""
    if cfg.embedding in BAND_FLEXIBLE:
        return
    from geomed_ssl.data.bands import band_order

    try:
        order = band_order(cfg.band_names, list(band_names), where)
    except DataError as err:
        raise DataError(f"{err} A '{cfg.embedding}' patch embedding reads exactly the bands it was pretrained on; "
                        "pretrain with model.embedding=spectral or wavelength to use it on other band sets.") from None
    if order is not None:
        raise DataError(f"{where}: the bands {' '.join(band_names)} are not in the encoder's order "
                        f"({' '.join(cfg.band_names)}); pick and order them by name first "
                        "(geomed_ssl.data.conform.conform_catalog, as every command does).")


MAX_SIDE = 65536  # window side in pixels / voxels (tokens per window are bounded by MAX_TOKENS too)


@dataclass
class EncoderConfig:
    """Everything needed to rebuild the encoder; JSON-safe through ``to_dict`` / ``from_dict``.

    Every field is typed and bounded (the size limits of ``geomed_ssl.config``): an export's config.json is checked
    before anything is built from it."""

    in_chans: int = setting(dataclasses.MISSING, "input bands", bounds=f"[1, {MAX_CHANNELS}]")
    spatial_dims: int = setting(2, "2 (rasters) or 3 (volumes)", bounds="[2, 3]")
    img_size: tuple[int, ...] = setting((64, 64), "training window per axis", bounds=f"[1, {MAX_SIDE}]")
    patch_size: tuple[int, ...] = setting((8, 8), "token patch per axis", bounds=f"[1, {MAX_PATCH}]")
    embedding: str = setting("plain", "patch embedding", choices=EMBEDDINGS)
    embed_dim: int = setting(192, "token width", bounds=f"[1, {MAX_EMBED_DIM}]")
    depth: int = setting(12, "transformer blocks", bounds=f"[1, {MAX_DEPTH}]")
    num_heads: int = setting(3, "attention heads", bounds=f"[1, {MAX_HEADS}]")
    mlp_ratio: float = setting(4.0, "MLP width / embed_dim", bounds=f"(0, {MAX_MLP_RATIO:g}]")
    qkv_bias: bool = setting(True, "bias in the attention projections")
    norm_eps: float = setting(1e-6, "LayerNorm epsilon", bounds="(0, 1)")
    drop_path: float = setting(0.0, "stochastic depth rate", bounds="[0, 1)")
    band_names: list[str] = setting([], "band names in input order")
    wavelengths: list[float | None] | None = setting(None, "centre wavelengths in µm, None where unknown",
                                                     bounds="> 0")
    stats: dict[str, Any] | None = setting(None, "per-band normalisation statistics (geomed_ssl.data.stats)")
    band_groups: list[list[int]] | None = setting(None, "grouped: 0-based band indices per group (null: ~4 adjacent "
                                                  "bands)", bounds=f"[0, {MAX_CHANNELS})")
    spectral_chunk: int = setting(1, "spectral: adjacent bands per token", bounds=f"[1, {MAX_CHANNELS}]")
    channel_embed: str = setting("learned", "spectral: learned | wavelength (sin-cos of the centre wavelength)",
                                 choices=CHANNEL_EMBEDS)
    bandwidths: list[float | None] | None = setting(None, "band widths in µm (wavelength embedding), None where "
                                                    "unknown", bounds=">= 0")

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int) or isinstance(self.patch_size, int):
            dims = self.spatial_dims if self.spatial_dims in (2, 3) else 2
            self.img_size = as_tuple(self.img_size, dims, "img_size")
            self.patch_size = as_tuple(self.patch_size, dims, "model.patch_size")
        self.band_names = list(self.band_names or [])
        check_instance(self, "encoder", "encoder config")
        if len(self.img_size) != self.spatial_dims or len(self.patch_size) != self.spatial_dims:
            raise ConfigError(f"encoder img_size {list(self.img_size)} and patch_size {list(self.patch_size)} must "
                              f"have {self.spatial_dims} values (spatial_dims).")
        if self.embedding == "grouped" and self.band_groups is None:
            self.band_groups = default_band_groups(self.in_chans)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the key when the config cannot build an encoder."""
        check_window(self.img_size, self.patch_size)
        check_heads(self.embed_dim, self.num_heads, "model.embed_dim", "model.num_heads")
        check_sincos_dim(self.embed_dim, self.spatial_dims, "model.embed_dim")
        if self.band_names and len(self.band_names) != self.in_chans:
            raise ConfigError(f"band_names lists {len(self.band_names)} bands but in_chans is {self.in_chans}.")
        if self.wavelengths is not None and len(self.wavelengths) != self.in_chans:
            raise ConfigError(f"wavelengths lists {len(self.wavelengths)} values but in_chans is {self.in_chans}.")
        if self.bandwidths is not None and len(self.bandwidths) != self.in_chans:
            raise ConfigError(f"bandwidths lists {len(self.bandwidths)} values but in_chans is {self.in_chans}.")
        self._validate_spectral()

    def _validate_spectral(self) -> None:
        if self.embedding == "grouped":
            flat = [i for g in self.band_groups or [] for i in g]
            if not self.band_groups or any(not g for g in self.band_groups):
                raise ConfigError("model.band_groups must be a list of non-empty band lists, e.g. [[B02, B03], [B11]].")
            if any(not 0 <= i < self.in_chans for i in flat):
                raise ConfigError(f"model.band_groups refers to a band index outside 0..{self.in_chans - 1}.")
            if len(set(flat)) != len(flat):
                raise ConfigError("model.band_groups lists a band in more than one group; give each band one group.")
        spectral_wl = self.embedding == "spectral" and self.channel_embed == "wavelength"
        if self.embedding == "wavelength" or spectral_wl:
            wl = self.wavelengths or [None] * self.in_chans
            unknown = [self.band_names[i] if self.band_names else f"band {i + 1}"
                       for i, w in enumerate(wl) if w is None]
            if unknown:
                what = "model.channel_embed=wavelength" if spectral_wl else "model.embedding=wavelength"
                raise ConfigError(
                    f"{what} needs every band's centre wavelength; unknown for {unknown[:5]}"
                    f"{' ...' if len(unknown) > 5 else ''}. Set data.sensor (band names matched to a sensor profile) "
                    "or data.wavelengths (µm, one per band)."
                )

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of an ``img_size`` input."""
        return token_grid(self.img_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["img_size"], out["patch_size"] = list(self.img_size), list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "encoder config") -> EncoderConfig:
        """Inverse of ``to_dict``. Unknown keys, a missing ``in_chans``, values of the wrong type or out of bounds
        and fields that do not fit together are a one-line ConfigError starting with ``source`` (the file)."""
        values = check_values(cls, data, "encoder", source)
        if "in_chans" not in values:
            raise ConfigError(f"{source}: encoder.in_chans is missing.")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_recipe(
        cls,
        model: ModelConfig,
        data: DataConfig,
        in_chans: int,
        band_names: list[str] | None = None,
        wavelengths: list[float | None] | None = None,
        stats: dict[str, Any] | None = None,
        bandwidths: list[float | None] | None = None,
    ) -> EncoderConfig:
        """Build from the recipe's ``model`` and ``data`` sections plus what the catalog found (band names, centre
        wavelengths and widths in µm, statistics)."""
        nd = spatial_dims(data)
        return cls(
            in_chans=in_chans,
            spatial_dims=nd,
            img_size=as_tuple(data.patch_size, nd, "data.patch_size"),
            patch_size=as_tuple(model.patch_size, nd, "model.patch_size"),
            embedding=model.embedding,
            embed_dim=model.embed_dim,
            depth=model.depth,
            num_heads=model.num_heads,
            mlp_ratio=model.mlp_ratio,
            qkv_bias=model.qkv_bias,
            drop_path=model.drop_path,
            band_names=list(band_names or []),
            wavelengths=None if wavelengths is None else list(wavelengths),
            stats=stats,
            band_groups=resolve_band_groups(model.band_groups, band_names, in_chans) if model.embedding == "grouped"
            else None,
            spectral_chunk=model.spectral_chunk,
            channel_embed=model.channel_embed,
            bandwidths=None if bandwidths is None else list(bandwidths),
        )


@lru_cache(maxsize=32)
def _cached_sincos(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    with torch.device("cpu"):  # never cache a meta tensor (models are built on the meta device to check exports)
        return sincos_pos_embed(grid, dim)  # (N, D) float32, CPU; treat as read-only


def grid_pos_embed(grid: tuple[int, ...], dim: int, ref: torch.Tensor) -> torch.Tensor:
    """``(1, N, D)`` sin-cos positions for ``grid`` on ``ref``'s device and dtype (recomputed, cached on CPU)."""
    return _cached_sincos(tuple(grid), dim).to(device=ref.device, dtype=ref.dtype)[None]


def init_mae_weights(module: nn.Module) -> None:
    """MAE init for a module tree: xavier_uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                drop_path: float = 0.0) -> nn.ModuleList:
    """``depth`` timm Blocks (fused SDPA attention, exact GELU) with a linear stochastic-depth ramp."""
    norm = partial(nn.LayerNorm, eps=norm_eps)
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm) for r in rates
    )


class ViTEncoder(nn.Module):
    """ViT over 2D or 3D token grids; any band count, window and patch size."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = build_patch_embed(cfg)
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
        wavelength, ``U * N`` (unit-major) for grouped and spectral. ``channel_ids`` (spectral, wavelength): ``x``
        holds only these of the encoder's bands, in this order (random band subsets during pretraining)."""
        if channel_ids is None:
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
        (spectral; of an input with ``num_channels`` bands), or one unit of all bands (plain, wavelength)."""
        return self.patch_embed.units(num_channels)

    def add_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the CLS token (plus its zero position): (B, N, D) -> (B, 1+N, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _layer_ids(self, layers: list[int] | tuple[int, ...] | None) -> list[int]:
        depth = len(self.blocks)
        ids = []
        for i in layers or []:
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
        tokens, grid = self.embed(x)
        out, _ = self.run_blocks(self.add_cls(tokens))
        if out.shape[1] - 1 == math.prod(grid):
            return out
        return torch.cat([out[:, :1], self.spatial_tokens(out[:, 1:], grid)], dim=1)  # (B, 1+N, D)

    def forward_features(
        self, x: torch.Tensor, layers: list[int] | tuple[int, ...]
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
        return names | {f"patch_embed.{n}" for n in ("group_embed", "channel_embed") if hasattr(self.patch_embed, n)}

    def select_bands(self, band_names: list[str], wavelengths: list[float | None] | None = None,
                     bandwidths: list[float | None] | None = None) -> ViTEncoder:
        """This encoder for data holding ``band_names`` (with their centre wavelengths and widths in µm, when known).

        Same bands in the same order: ``self``. Otherwise only ``spectral`` and ``wavelength`` embeddings can run:
        each band is matched to an encoder band by name, else by the nearest wavelength (within 15 nm), and the
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
                 describe_matches(matches, cfg.band_names))
        learned = cfg.embedding == "spectral" and cfg.channel_embed == "learned"
        needs_match = learned or cfg.stats is not None
        unmatched = [m.name for m in matches if m.index is None and (needs_match or m.wavelength is None)]
        if unmatched:
            raise DataError(
                f"bands {unmatched} match none of the encoder's bands ({' '.join(cfg.band_names)}) by name or by "
                f"centre wavelength (within 15 nm); drop them from the data (data.band_names / a band subset) or "
                "give their wavelengths (data.sensor or data.wavelengths)."
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
