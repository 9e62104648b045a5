"""Spectral-aware patch embeddings and band matching: one model for any sensor's bands.

Three kinds beside the plain conv (``patch_embed.PlainPatchEmbed``), all mapping images (B, C, *S) to tokens
(B, T, D) and the spatial token grid:

- ``GroupedPatchEmbed`` (SatMAE): bands split into groups, a projection and a learned embedding per group;
- ``SpectralPatchEmbed`` (ChannelViT / SpectralGPT): one projection shared by every band (or chunk of adjacent
  bands), plus a channel embedding, learned per band or sin-cos of the band's centre wavelength;
- ``WavelengthPatchEmbed`` (DOFA): the conv weights are generated per band from its wavelength by a small
  hypernetwork, so the token count does not depend on the band count.

Tokens are *unit-major*: token ``t = u * N + n`` is spectral unit ``u`` (a band group, a band chunk; wavelength and
plain have a single unit of all bands) at spatial position ``n``, so ``T = U * N``. ``units(c)`` lists the input
channels each unit reads, which is how MAE lines reconstruction targets up with tokens.

``UnitPool`` (``model.tokens_per_position: k``) pools the ``U`` unit tokens of each position into ``k`` (attention
over the units, per position): a factorised spectral embedding whose transformer sees ``k * N`` tokens, so with
``k = 1`` it costs what ``plain`` costs after the embedding, whatever ``U`` is.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.bands.matching import loose_name, same_band
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.pos_embed import sincos_1d
from geomed_ssl.models.tokens import token_grid

NM_PER_UM = 1000.0  # wavelengths are stored in µm; sin-cos features take nanometres (periods 2π .. 2π·10⁴ nm)
WAVE_DIM = 128  # sin-cos features per wavelength (and per band width) fed to the weight generator
WAVE_HIDDEN = 128  # width of the weight generator's MLP


def default_band_groups(num_bands: int, size: int = 4) -> list[list[int]]:
    """``ceil(C / size)`` groups of adjacent bands, sizes as even as possible (13 bands -> 4, 3, 3, 3)."""
    return [a.tolist() for a in np.array_split(np.arange(num_bands), math.ceil(num_bands / size))]


def chunk_units(num_channels: int, chunk: int) -> list[list[int]]:
    """Adjacent chunks of ``chunk`` channels; the last one holds the remainder."""
    return [list(range(i, min(i + chunk, num_channels))) for i in range(0, num_channels, chunk)]


def wavelength_sincos(values_um: Sequence[float], dim: int) -> torch.Tensor:
    """``(C,)`` wavelengths or widths in µm -> float32 ``(C, dim)`` sin-cos features of the value in nm."""
    return sincos_1d(torch.tensor([float(v) * NM_PER_UM for v in values_um], dtype=torch.float64), dim).float()


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class SpectralEmbedBase(nn.Module):
    """Shared geometry: patch size, grid and input checks."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, ...], spatial_dims: int) -> None:
        super().__init__()
        if len(patch_size) != spatial_dims or spatial_dims not in (2, 3):
            raise ValueError(f"patch_size {patch_size} does not fit spatial_dims={spatial_dims}.")
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.patch_size, self.spatial_dims = tuple(patch_size), spatial_dims

    def grid_for(self, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        return token_grid(tuple(spatial_shape), self.patch_size)

    def _check(self, x: torch.Tensor, channel_ids: torch.Tensor | None) -> tuple[int, ...]:
        want = self.in_chans if channel_ids is None else len(channel_ids)
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != want:
            raise DataError(
                f"expected images of shape (B, {want}, {', '.join('S' * self.spatial_dims)}), got {tuple(x.shape)}; "
                "the data's band count must match the encoder's bands (see ViTEncoder.select_bands)."
            )
        return self.grid_for(tuple(x.shape[2:]))

    def units(self, num_channels: int | None = None) -> list[list[int]]:
        """Input channels read by each spectral unit (one unit of all channels by default)."""
        return [list(range(self.in_chans if num_channels is None else num_channels))]

    def _xavier(self, conv: nn.Module) -> None:
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))  # MAE: as a linear on the patch


class GroupedPatchEmbed(SpectralEmbedBase):
    """SatMAE: each band group has its own conv and a learned group embedding; tokens = groups x positions.
    Bands in no group are not read."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, ...], spatial_dims: int,
                 groups: Sequence[Sequence[int]]) -> None:
        super().__init__(in_chans, embed_dim, patch_size, spatial_dims)
        self.groups = [list(map(int, g)) for g in groups]
        conv = _conv(spatial_dims)
        self.proj = nn.ModuleList(conv(len(g), embed_dim, self.patch_size, self.patch_size) for g in self.groups)
        self.group_embed = nn.Parameter(torch.zeros(len(self.groups), embed_dim))  # (G, D)

    def reset_parameters(self) -> None:
        for conv in self.proj:
            self._xavier(conv)
        nn.init.normal_(self.group_embed, std=0.02)

    def units(self, num_channels: int | None = None) -> list[list[int]]:
        return [list(g) for g in self.groups]

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None,
                by_position: bool = False) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, C, *S) -> tokens (B, G*N, D) group-major (``by_position``: (B, N, G, D)), grid."""
        if channel_ids is not None:
            raise DataError("a grouped patch embedding reads exactly its training bands; band subsets need "
                            "model.embedding=spectral or wavelength.")
        grid = self._check(x, None)
        parts = []
        for g, proj in zip(self.groups, self.proj):
            contiguous = g == list(range(g[0], g[0] + len(g)))
            xg = x[:, g[0]:g[0] + len(g)] if contiguous else x[:, g]  # (B, |g|, *S)
            parts.append(proj(xg).flatten(2).transpose(1, 2))  # (B, N, D)
        if by_position:
            return torch.stack(parts, dim=2) + self.group_embed.to(x.dtype), grid  # (B, N, G, D)
        tokens = torch.stack(parts, dim=1) + self.group_embed.to(x.dtype)[None, :, None]  # (B, G, N, D)
        return tokens.flatten(1, 2), grid


class SpectralPatchEmbed(SpectralEmbedBase):
    """ChannelViT / SpectralGPT: one conv shared by every chunk of ``chunk`` adjacent bands plus a channel
    embedding (a chunk gets the mean of its bands'); tokens = chunks x positions. A last chunk with fewer bands
    than ``chunk`` reads the first kernel channels only."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, ...], spatial_dims: int,
                 chunk: int = 1, channel_embed: str = "learned",
                 wavelengths: Sequence[float | None] | None = None) -> None:
        super().__init__(in_chans, embed_dim, patch_size, spatial_dims)
        self.chunk, self.channel_embed_kind = int(chunk), channel_embed
        self.proj = _conv(spatial_dims)(self.chunk, embed_dim, self.patch_size, self.patch_size)
        if channel_embed == "learned":
            self.channel_embed = nn.Parameter(torch.zeros(in_chans, embed_dim))  # (C, D)
        else:  # fixed, rebuilt from the config's wavelengths: not in the state dict
            self.register_buffer("channel_table", wavelength_sincos(wavelengths or [], embed_dim), persistent=False)

    def reset_parameters(self) -> None:
        self._xavier(self.proj)
        if self.channel_embed_kind == "learned":
            nn.init.normal_(self.channel_embed, std=0.02)

    def channel_embedding(self, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(c, D) embedding of the input's bands (all of the encoder's, or ``channel_ids`` of them)."""
        table = self.channel_embed if self.channel_embed_kind == "learned" else self.channel_table
        return table if channel_ids is None else table[channel_ids.to(table.device)]

    def units(self, num_channels: int | None = None) -> list[list[int]]:
        return chunk_units(self.in_chans if num_channels is None else num_channels, self.chunk)

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None,
                by_position: bool = False) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, c, *S) holding the encoder's bands (or ``channel_ids`` of them, in that order) -> tokens
        (B, U*N, D) chunk-major with U = ceil(c / chunk) (``by_position``: (B, N, U, D)), grid."""
        grid = self._check(x, channel_ids)
        b, c, *spatial = x.shape
        k = self.chunk
        u = math.ceil(c / k)
        emb = self.channel_embedding(channel_ids).to(x.dtype)  # (c, D)
        if u * k != c:  # pad the last chunk (input and its embedding weight)
            x = torch.cat([x, x.new_zeros(b, u * k - c, *spatial)], dim=1)
        count = torch.tensor([len(unit) for unit in chunk_units(c, k)], device=x.device, dtype=x.dtype)  # (U,)
        unit_emb = F.pad(emb, (0, 0, 0, u * k - c)).reshape(u, k, -1).sum(1) / count[:, None]  # (U, D) mean
        if by_position:
            return self._by_position(x, grid, unit_emb + self.proj.bias.to(x.dtype)), grid  # (B, N, U, D)
        tokens = self.proj(x.reshape(b * u, k, *spatial)).flatten(2).transpose(1, 2)  # (B*U, N, D)
        tokens = tokens.reshape(b, u, -1, self.embed_dim)  # (B, U, N, D)
        return (tokens + unit_emb[None, :, None]).flatten(1, 2), grid

    def _by_position(self, x: torch.Tensor, grid: tuple[int, ...], unit_bias: torch.Tensor) -> torch.Tensor:
        """The conv as a matmul on patches already laid out by position, plus ``unit_bias`` (U, D) (the conv's bias
        and each unit's embedding, added once): ``x`` (B, U*chunk, *S) -> (B, N, U, D), with no transpose of a
        (B, U, N, D) tensor (the big one when U is large)."""
        b, nd = x.shape[0], self.spatial_dims
        u = x.shape[1] // self.chunk
        split = [d for g, p in zip(grid, self.patch_size) for d in (g, p)]  # g0, p0, g1, p1[, g2, p2]
        patches = x.reshape(b, u, self.chunk, *split)  # (B, U, chunk, g0, p0, g1, p1, ...)
        order = [0, *(3 + 2 * i for i in range(nd)), 1, 2, *(4 + 2 * i for i in range(nd))]
        patches = patches.permute(order).reshape(b, math.prod(grid), u, -1)  # (B, N, U, chunk * prod(patch))
        return F.linear(patches, self.proj.weight.reshape(self.embed_dim, -1)) + unit_bias  # (B, N, U, D)


class WavelengthPatchEmbed(SpectralEmbedBase):
    """DOFA: a hypernetwork turns each band's wavelength (and width, when known) into its conv kernel and bias;
    the kernels of the bands present are stacked into one conv (biases averaged), so any band set with known
    wavelengths runs through the same weights and gives N tokens."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, ...], spatial_dims: int,
                 wavelengths: Sequence[float], bandwidths: Sequence[float | None] | None = None) -> None:
        super().__init__(in_chans, embed_dim, patch_size, spatial_dims)
        self.register_buffer("band_features", self.features_for(wavelengths, bandwidths), persistent=False)
        self.generator = nn.Sequential(nn.Linear(2 * WAVE_DIM, WAVE_HIDDEN), nn.GELU(),
                                       nn.Linear(WAVE_HIDDEN, WAVE_HIDDEN), nn.GELU())
        self.weight_head = nn.Linear(WAVE_HIDDEN, embed_dim * math.prod(self.patch_size))
        self.bias_head = nn.Linear(WAVE_HIDDEN, embed_dim)
        self.scale = 1.0 / math.sqrt(math.prod(self.patch_size))  # keeps initial tokens O(1) for ~10 bands

    @staticmethod
    def features_for(wavelengths: Sequence[float], bandwidths: Sequence[float | None] | None = None) -> torch.Tensor:
        """(C, 2 * WAVE_DIM): sin-cos of the centre wavelength, then of the band width (zeros where unknown)."""
        centre = wavelength_sincos(wavelengths, WAVE_DIM)  # (C, W)
        widths = list(bandwidths) if bandwidths is not None else [None] * len(wavelengths)
        width = wavelength_sincos([w or 0.0 for w in widths], WAVE_DIM)
        width = width * torch.tensor([w is not None for w in widths], dtype=torch.float32)[:, None]
        return torch.cat([centre, width], dim=1)

    def reset_parameters(self) -> None:
        """Linears are xavier with zero bias (the encoder's MAE init); nothing else to set."""

    def band_kernels(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, 2W) band features -> kernels (c, D, *patch) and biases (c, D)."""
        h = self.generator(features)  # (c, hidden)
        kernels = self.weight_head(h).reshape(-1, self.embed_dim, *self.patch_size) * self.scale
        return kernels, self.bias_head(h)

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (B, c, *S) holding the encoder's bands (or ``channel_ids`` of them) -> tokens (B, N, D), grid."""
        grid = self._check(x, channel_ids)
        feats = self.band_features if channel_ids is None else self.band_features[channel_ids.to(x.device)]
        kernels, biases = self.band_kernels(feats.to(x.dtype))  # (c, D, *p), (c, D)
        conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
        out = conv(x, kernels.transpose(0, 1), biases.mean(0), stride=self.patch_size)  # (B, D, *grid)
        return out.flatten(2).transpose(1, 2), grid


class UnitPool(nn.Module):
    """The ``U`` unit tokens of each position -> ``k`` tokens: per head, ``k`` learned queries score every unit token
    of the position (after a LayerNorm), a softmax over the units weights their sum, and a linear maps the result
    (multi-head attention pooling with identity keys and values; any ``U``, so band subsets run too). With ``k > 1``
    each output slot gets a learned embedding so the blocks can tell them apart. (B, N, U, D) -> (B, k*N, D),
    slot-major like unit tokens."""

    def __init__(self, dim: int, num_tokens: int, num_heads: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not a multiple of num_heads {num_heads}.")
        self.num_tokens, self.num_heads = int(num_tokens), int(num_heads)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.query = nn.Parameter(torch.zeros(self.num_tokens, dim))  # (k, D): k queries per head of D / H
        self.proj = nn.Linear(dim, dim)
        if self.num_tokens > 1:
            self.slot_embed = nn.Parameter(torch.zeros(self.num_tokens, dim))  # (k, D)

    def reset_parameters(self) -> None:
        """Queries (and slot embeddings) normal(0.02); the norm and linear keep the encoder's MAE init."""
        nn.init.normal_(self.query, std=0.02)
        if self.num_tokens > 1:
            nn.init.normal_(self.slot_embed, std=0.02)

    def query_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """(D, k*H): column ``j * H + h`` holds query ``j``'s head-``h`` slice (scaled by 1/sqrt(D/H)) on that head's
        rows and zeros elsewhere, so ``keys @ M`` is every head's score of every query in one matmul."""
        d, h = self.query.shape[1], self.num_heads
        rows = torch.arange(d, device=self.query.device) // (d // h)
        mask = (rows[:, None] == torch.arange(h, device=self.query.device)[None]).to(dtype)  # (D, H)
        q = self.query.to(dtype).t() * (d // h) ** -0.5  # (D, k)
        return (q[:, :, None] * mask[:, None, :]).reshape(d, -1)  # (D, k*H)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, N, U, D), each position's unit tokens (``by_position`` of the patch embeddings) ->
        (B, k*N, D) slot-major."""
        b, n, u, d = tokens.shape
        k, h = self.num_tokens, self.num_heads
        x = tokens.reshape(b * n, u, d)  # (B*N, U, D): a position's units
        w = (self.norm(x) @ self.query_matrix(x.dtype)).softmax(dim=1)  # (B*N, U, k*H) weights over the units
        mixed = torch.bmm(w.transpose(1, 2), x)  # (B*N, k*H, D): each head's weights on every channel (cheap)
        pooled = mixed.reshape(b * n, k, h, h, d // h).diagonal(dim1=2, dim2=3)  # (B*N, k, D/H, H): own head's
        out = self.proj(pooled.transpose(-1, -2).reshape(b, n, k, d))  # (B, N, k, D)
        if k > 1:
            out = out + self.slot_embed.to(out.dtype)
        return out.transpose(1, 2).reshape(b, k * n, d)

    def no_weight_decay(self) -> set[str]:
        return {"query"} | ({"slot_embed"} if self.num_tokens > 1 else set())


@dataclass
class BandMatch:
    """One data band and the encoder band it was matched to (``index`` None: no match)."""

    name: str
    wavelength: float | None
    index: int | None
    how: str  # "name" | "wavelength" | "none"


def match_bands(enc_names: Sequence[str], enc_wavelengths: Sequence[float | None] | None, names: Sequence[str],
                wavelengths: Sequence[float | None] | None = None) -> list[BandMatch]:
    """Match data bands to the encoder's: by name, else by the nearest centre wavelength that is the same band
    (``bands.matching.same_band``: within 15 nm or 2 %). Names match exactly, or written another way (``B1`` /
    ``B01``, GDAL's ``Band 1 (0.400 Micrometers)`` / ``band_1``) when the data holds as many bands as the encoder and
    every one matches so, as the band rule of the other embeddings (``bands.matching.band_order``). A data band's
    wavelength defaults to its name-matched encoder band's; a name match whose wavelengths are both known and are
    not the same band is another sensor's band of that name (Landsat-8 B10 is thermal, Sentinel-2 B10 cirrus) and is
    matched by wavelength instead."""
    enc_wl = list(enc_wavelengths) if enc_wavelengths is not None else [None] * len(enc_names)
    data_wl = list(wavelengths) if wavelengths is not None else [None] * len(names)
    if len(data_wl) != len(names):
        raise DataError(f"{len(names)} band names but {len(data_wl)} wavelengths; give one wavelength per band.")
    by_name = {n: i for i, n in enumerate(enc_names)}
    named = [by_name.get(n) for n in names]
    if None in named and len(names) == len(enc_names):  # the same bands written another way?
        enc_loose = {loose_name(n): i for i, n in enumerate(enc_names)}
        loose = [enc_loose.get(loose_name(n)) for n in names]
        if None not in loose and len(set(loose)) == len(loose) and len(enc_loose) == len(enc_names):
            named = loose
    out = []
    for name, wl, i in zip(names, data_wl, named):
        if i is not None and (wl is None or enc_wl[i] is None or same_band(wl, enc_wl[i])):
            out.append(BandMatch(name, wl if wl is not None else enc_wl[i], i, "name"))
            continue
        near = [(abs(w - wl), i) for i, w in enumerate(enc_wl) if wl is not None and w is not None]
        best = min(near, default=None)
        if best is not None and same_band(wl, enc_wl[best[1]]):
            out.append(BandMatch(name, wl, best[1], "wavelength"))
        else:
            out.append(BandMatch(name, wl, None, "none"))
    return out


def describe_matches(matches: Sequence[BandMatch], enc_names: Sequence[str],
                     enc_wavelengths: Sequence[float | None] | None = None, keep: int = 12) -> str:
    """One readable line per data band: ``B04 (0.665 µm) <- B04 (0.665 µm) [name]``; of more than ``keep`` bands
    (a hyperspectral cube's hundreds), the first and last ``keep / 2`` and how the others were matched."""
    lines = []
    enc_wl = list(enc_wavelengths) if enc_wavelengths is not None else [None] * len(enc_names)
    for m in matches:
        wl = f" ({m.wavelength:g} µm)" if m.wavelength is not None else ""
        at = f" ({enc_wl[m.index]:g} µm)" if m.index is not None and enc_wl[m.index] is not None else ""
        src = f"{enc_names[m.index]}{at} [{m.how}]" if m.index is not None else "no encoder band"
        lines.append(f"  {m.name}{wl} <- {src}")
    if len(lines) > keep:
        hidden = matches[keep // 2:-(keep // 2)]
        how = Counter(m.how if m.index is not None else "no encoder band" for m in hidden)
        summary = ", ".join(f"{n} by {h}" if h != "no encoder band" else f"{n} with no encoder band"
                            for h, n in how.items())
        lines = [*lines[:keep // 2], f"  ... {len(hidden)} more ({summary})", *lines[-(keep // 2):]]
    return "\n".join(lines)


def resolve_band_groups(groups: list[list[str]] | None, band_names: list[str] | None,
                        in_chans: int) -> list[list[int]] | None:
    """``model.band_groups`` (band names) -> 0-based band indices; None stays None (default grouping)."""
    if groups is None:
        return None
    names = [str(n) for n in band_names or []]
    unknown = [str(n) for g in groups for n in g if str(n) not in names]
    if unknown:
        raise ConfigError(
            f"model.band_groups names bands the data does not have: {unknown}. The data's bands are "
            f"{names or f'{in_chans} unnamed bands'}; set data.band_names or fix the groups."
        )
    return [[names.index(str(n)) for n in g] for g in groups]


def subset_stats(stats: dict[str, Any] | None, enc_names: list[str], matches: list[Any]) -> dict[str, Any] | None:
    """The encoder's per-band statistics for the matched bands, renamed to the data's band names."""
    if not stats or not stats.get("bands"):
        return stats
    by_name = {b.get("name"): b for b in stats["bands"]}
    bands = []
    for m in matches:
        entry = by_name.get(enc_names[m.index]) if m.index is not None else None
        if entry is None:
            raise DataError(f"the encoder's statistics lack band '{m.name}'; re-export the encoder with "
                            "`geomed-ssl pretrain`.")
        bands.append({**entry, "name": m.name})
    return {**stats, "bands": bands}


def matched_bandwidths(enc_widths: Sequence[float | None] | None, matches: Sequence[BandMatch],
                       data_widths: Sequence[float | None] | None = None) -> list[float | None] | None:
    """Band widths (µm) of matched data bands: the data's where known, else the matched encoder band's."""
    data = list(data_widths) if data_widths is not None else [None] * len(matches)
    out = [w if w is not None else (enc_widths[m.index] if enc_widths is not None and m.index is not None else None)
           for w, m in zip(data, matches)]
    return out if any(w is not None for w in out) else None
