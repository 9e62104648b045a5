"""The encoder's configuration: everything needed to rebuild a :class:`~geomed_ssl.models.encoder.ViTEncoder`
(bands, wavelengths, statistics, patch size, architecture), a plain dataclass that round-trips through JSON, and the
check that data bands fit an encoder tied to its training bands.

Import it from :mod:`geomed_ssl.models.encoder` (or :mod:`geomed_ssl.models`), which re-exports it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from geomed_ssl.config import (CHANNEL_EMBEDS, EMBEDDINGS, MAX_CHANNELS, MAX_DEPTH, MAX_EMBED_DIM, MAX_HEADS,
                               MAX_MLP_RATIO, MAX_PATCH, MAX_UNIT_TOKENS, DataConfig, ModelConfig, as_tuple,
                               check_heads, check_instance, check_values, check_window, setting, spatial_dims)
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.pos_embed import check_sincos_dim
from geomed_ssl.models.spectral import default_band_groups, resolve_band_groups
from geomed_ssl.models.tokens import token_grid

BAND_FLEXIBLE = ("spectral", "wavelength")  # embeddings that run on other band sets
UNIT_EMBEDDINGS = ("grouped", "spectral")  # embeddings with several tokens (band groups / chunks) per position


def check_encoder_bands(cfg: EncoderConfig, band_names: list[str], where: str = "the data") -> None:
    """For embeddings tied to their training bands (plain, grouped): a DataError unless ``band_names`` are the
    encoder's, in order. Missing bands are named; the same bands in another order (or with extra ones) must be
    brought to the encoder's order first (``geomed_ssl.bands.conform.conform_catalog``: every command does)."""
    if cfg.embedding in BAND_FLEXIBLE:
        return
    from geomed_ssl.bands.matching import band_order

    try:
        order = band_order(cfg.band_names, list(band_names), where)
    except DataError as err:
        raise DataError(f"{err} A '{cfg.embedding}' patch embedding reads exactly the bands it was pretrained on; "
                        "pretrain with model.embedding=spectral or wavelength to use it on other band sets.") from None
    if order is not None:
        raise DataError(f"{where}: the bands {' '.join(band_names)} are not in the encoder's order "
                        f"({' '.join(cfg.band_names)}); pick and order them by name first "
                        "(geomed_ssl.bands.conform.conform_catalog, as every command does).")


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
    tokens_per_position: int | None = setting(None, "grouped / spectral: the unit tokens of each position pooled "
                                              "into this many (UnitPool); None: one per band group / chunk",
                                              bounds=f"[1, {MAX_UNIT_TOKENS}]")
    scale: dict[str, Any] | None = setting(None, "the training files' typical pixel / voxel size: {'size': per axis, "
                                           "'units'} (rasters: x, y in their CRS's units, degrees as metres; "
                                           "volumes: mm in R, A, S order as read); None: unknown")

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
        bands = self.stats.get("bands") if isinstance(self.stats, dict) else None
        if isinstance(bands, list) and bands and len(bands) != self.in_chans:
            raise ConfigError(f"stats describe {len(bands)} bands but in_chans is {self.in_chans}.")
        self._validate_spectral()
        self._validate_pooling()

    @property
    def units_per_position(self) -> int:
        """Spectral units per position of the full band set: groups (grouped), chunks (spectral), else 1."""
        if self.embedding == "grouped":
            return len(self.band_groups or [])
        if self.embedding == "spectral":
            return math.ceil(self.in_chans / self.spectral_chunk)
        return 1

    @property
    def pooled(self) -> bool:
        """Whether a UnitPool merges the unit tokens of each position (grouped / spectral with tokens_per_position)."""
        return self.tokens_per_position is not None and self.embedding in UNIT_EMBEDDINGS

    def _validate_pooling(self) -> None:
        k = self.tokens_per_position
        if k is None:
            return
        if self.embedding not in UNIT_EMBEDDINGS:
            raise ConfigError(f"model.tokens_per_position {k} needs a grouped or spectral embedding "
                              f"('{self.embedding}' already gives one token per position); set it to null.")
        if k > self.units_per_position:
            raise ConfigError(f"model.tokens_per_position {k} is more than the {self.units_per_position} band groups / "
                              "chunks per position it pools; pick at most that many (1: plain's token count).")

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
        scale: dict[str, Any] | None = None,
    ) -> EncoderConfig:
        """Build from the recipe's ``model`` and ``data`` sections plus what the catalog found (band names, centre
        wavelengths and widths in µm, statistics). A spectral chunk wider than the data's bands is warned about."""
        nd = spatial_dims(data)
        if model.embedding == "spectral" and model.spectral_chunk > in_chans:
            import logging

            logging.getLogger("geomed_ssl").warning(
                f"warning: model.spectral_chunk {model.spectral_chunk} is more than the data's {in_chans} bands: one "
                f"token per position holds every band, padded with {model.spectral_chunk - in_chans} bands of "
                f"zeros; model.spectral_chunk {in_chans} gives that token without the padding.")
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
            band_groups=grouped_bands(model, band_names, in_chans) if model.embedding == "grouped" else None,
            spectral_chunk=model.spectral_chunk,
            channel_embed=model.channel_embed,
            bandwidths=None if bandwidths is None else list(bandwidths),
            tokens_per_position=model.tokens_per_position if model.embedding in UNIT_EMBEDDINGS else None,
            scale=scale,
        )


def grouped_bands(model: ModelConfig, band_names: list[str] | None, in_chans: int) -> list[list[int]]:
    """The band groups of a grouped embedding: ``model.band_groups`` by name, else ``model.group_width`` adjacent
    bands per group."""
    groups = resolve_band_groups(model.band_groups, band_names, in_chans)
    return groups if groups is not None else default_band_groups(in_chans, model.group_width)
