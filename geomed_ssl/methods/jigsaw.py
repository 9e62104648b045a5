"""Jigsaw puzzles (Noroozi & Favaro, 2016): a fixed permutation set of maximal Hamming distance, shuffled tiles with
random jitter, and the registered method ``jigsaw`` (each tile encoded on its own, the tiles' CLS features
concatenated in puzzle order through an MLP head that names the permutation), 2D only (a 3x3x3 puzzle would cut the
small windows volumes train on into 27 tiles too small to encode).

The set is chosen greedily: start from the identity, then repeatedly add the permutation whose minimum Hamming
distance to those already chosen is largest (ties: the largest summed distance, then the first in lexicographic
order; the paper's Algorithm 1 adds the one of largest summed distance, which leaves closer pairs in the set), so it
is a pure function of (size, grid): every run and every resume uses the same classes, and a smaller set is a prefix
of a larger one. For a 3x3 grid every one of the 9! permutations is a candidate; the minimum pairwise Hamming
distance is then 9 for 2-9 permutations, 8 for 10-17, 7 for 18-84, 6 for 85-341 (so 6 for the default 100) and 5 for
342-1000. Grids above 3x3 draw a seeded pool of candidates.

Tiles: the window is cut into ``grid x grid`` cells; from each, a ``tile``-sized crop is taken at a random offset
inside the cell (the gap between tiles and the jitter keep edges and lines that continue across tiles from giving
the order away), and each tile is standardised per band on its own by default (no brightness or colour trend
across the image gives it away either).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
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

CANDIDATE_POOL = 100_000  # random candidates for grids above 3x3


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances between permutations: (P, T), (Q, T) -> (P, Q) long."""
    return (a[:, None, :] != b[None, :, :]).sum(dim=-1)


def min_hamming(perms: torch.Tensor) -> int:
    """Smallest Hamming distance between two distinct permutations of a set (P, T)."""
    d = hamming(perms, perms)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


@functools.lru_cache(maxsize=2)
def _candidates(tiles: int, seed: int) -> np.ndarray:
    """(Q, T) uint8 candidate permutations, the identity first: all of them in lexicographic order when there are
    at most 9! (a 3x3 grid), else the identity and a seeded random pool."""
    if math.factorial(tiles) <= 362_880:
        flat = itertools.chain.from_iterable(itertools.permutations(range(tiles)))
        return np.fromiter(flat, dtype=np.uint8, count=math.factorial(tiles) * tiles).reshape(-1, tiles)
    g = torch.Generator().manual_seed(seed)
    pool = torch.rand(CANDIDATE_POOL, tiles, generator=g).argsort(dim=1).to(torch.uint8)  # uniform permutations
    return np.concatenate([np.arange(tiles, dtype=np.uint8)[None], pool.numpy()])


@functools.lru_cache(maxsize=8)
def _permutation_set(size: int, grid: int, seed: int) -> torch.Tensor:
    # numpy, not torch: this one-off integer search is several times faster single-threaded on a busy CPU
    tiles = grid * grid
    cand = _candidates(tiles, seed)  # (Q, T), identity first
    if size > cand.shape[0]:
        raise ConfigError(f"jigsaw permutations={size} exceeds the {cand.shape[0]} orders of a {grid}x{grid} grid; "
                          f"use at most {cand.shape[0]}.")
    cols = np.ascontiguousarray(cand.T)  # (T, Q): one row per position, so a distance is T vector compares

    def distances(i: int) -> np.ndarray:  # (Q,) Hamming distance of every candidate to candidate i
        d = np.zeros(cols.shape[1], dtype=np.int64)
        for pos in range(tiles):
            d += cols[pos] != cols[pos, i]
        return d

    chosen = [0]
    min_d = distances(0)  # (Q,) distance to the nearest chosen permutation
    sum_d = min_d.copy()
    for _ in range(size - 1):
        score = min_d * (tiles * size + 1) + sum_d  # max-min first, then the largest summed distance
        nxt = int(score.argmax())  # the first among equals: lexicographic order
        chosen.append(nxt)
        d = distances(nxt)
        np.minimum(min_d, d, out=min_d)
        sum_d += d
    return torch.from_numpy(cand[chosen].astype(np.int64))


def permutation_set(size: int = 100, grid: int = 3, seed: int = 0) -> torch.Tensor:
    """The fixed permutation set: (size, grid*grid) long, row 0 the identity. ``seed`` only matters for grids
    above 3x3 (the candidate pool). ``perms[k][i] = j`` puts the tile of cell ``j`` at position ``i``."""
    if grid < 2:
        raise ConfigError(f"jigsaw grid must be at least 2, got {grid}.")
    if size < 2:
        raise ConfigError(f"jigsaw permutations must be at least 2, got {size}.")
    return _permutation_set(int(size), int(grid), int(seed)).clone()


def tile_size(window: Sequence[int], grid: int, tile: int | None = None, multiple_of: int = 1,
              fill: float = 64 / 75) -> int:
    """The tile side: ``tile`` if given, else the largest multiple of ``multiple_of`` (the token patch) not above
    ``fill`` x the cell side (Noroozi: 64 px tiles in 75 px cells). Refuses a grid larger than the window, a tile
    larger than its cell, and a cell too small for one token."""
    if len(window) != 2:
        raise ConfigError(f"jigsaw is 2D-only: a {len(window)}D window {tuple(window)} has no 3x3 tile puzzle "
                          "with a usable permutation set; use mae, simmim or inpainting for volumes.")
    side = min(int(s) for s in window)
    if grid > side:
        raise ConfigError(f"jigsaw grid {grid}x{grid} is larger than the {tuple(window)} window; use a grid of at "
                          f"most {side} (3 is usual) or a larger window.")
    cell = side // grid
    if tile is None:
        tile = int(cell * fill) // multiple_of * multiple_of
    if tile < max(1, multiple_of) or tile > cell or tile % multiple_of:
        raise ConfigError(f"jigsaw tile {tile} px must be a multiple of the token patch {multiple_of} and fit a "
                          f"{cell} px cell of a {grid}x{grid} grid on a {tuple(window)} window; use a larger window "
                          "or a smaller grid / patch.")
    return tile


def jigsaw_draws(grid: int) -> int:
    """Uniform draws one sample's puzzle takes: its label, then a row and a column offset per tile."""
    return 1 + 2 * grid * grid


def jigsaw_tiles(x: torch.Tensor, perms: torch.Tensor, draws: torch.Tensor, tile: int | None = None,
                 multiple_of: int = 1, normalize: bool = True,
                 valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled jittered tiles and their permutation labels.

    Args:
        x: (B, C, H, W); the grid is ``sqrt(perms.shape[1])``, over the top-left ``min(H, W)`` square.
        perms: (P, T) from :func:`permutation_set`.
        draws: (B, :func:`jigsaw_draws`) uniform [0, 1) draws, each sample's own (:class:`PerSample`): its label
            and its tiles' offsets.
        tile, multiple_of: see :func:`tile_size`.
        normalize: standardise each tile per band (mean 0, std 1).
        valid: (B, H, W) bool, the valid pixels: every tile of a sample keeps only the pixels valid in all of its
            tiles (the rest 0, and left out of the standardisation), so where nodata lies cannot place a tile.

    Returns:
        tiles (B, T, C, t, t) in puzzle order: ``tiles[b, i]`` is the crop of cell ``perms[labels[b], i]``;
        labels (B,) long in [0, P).
    """
    b, c, *window = x.shape
    grid = math.isqrt(perms.shape[1])
    t = tile_size(window, grid, tile, multiple_of)
    cell = min(window) // grid
    draws = draws.to(x.device)
    if draws.shape != (b, jigsaw_draws(grid)):
        raise ValueError(f"draws {tuple(draws.shape)} must be (B, {jigsaw_draws(grid)}) for a {grid}x{grid} puzzle.")
    labels = uniform_ints(draws[:, 0], perms.shape[0])  # (B,)
    jitter = uniform_ints(draws[:, 1:], cell - t + 1).reshape(b, grid * grid, 2)  # (B, T, 2)
    cells = torch.arange(grid * grid, device=x.device)
    origin = torch.stack([cells // grid, cells % grid], dim=1) * cell  # (T, 2) top-left of each cell
    order = perms.to(x.device)[labels]  # (B, T): the cell shown at each position
    starts = origin[order] + jitter  # (B, T, 2), an independent offset for every tile
    source = torch.arange(b, device=x.device).repeat_interleave(grid * grid)  # (B*T,)
    tiles = crop_at(x, starts.reshape(-1, 2), (t, t), source).reshape(b, grid * grid, c, t, t)
    if valid is None:
        return (standardize(tiles) if normalize else tiles), labels
    masks = crop_at(valid.to(x.device).bool()[:, None], starts.reshape(-1, 2), (t, t), source)
    common = shared_valid(masks.reshape(b, grid * grid, 1, t, t), dim=1)  # (B, 1, 1, t, t)
    return (standardize(tiles, valid=common) if normalize else tiles * common), labels


@dataclass
class JigsawSettings(PretextSettings):
    """The ``method:`` keys of ``name: jigsaw``."""

    grid: int = setting(3, "tiles per side (grid x grid puzzle)", bounds="[2, 4]")
    permutations: int = setting(100, "classes: a fixed set of orders of maximal minimum Hamming distance",
                                bounds="[2, 1000]")
    tile: int | None = setting(None, "tile side in pixels, a multiple of model.patch_size inside its cell; null: "
                               "the largest such multiple under 64/75 of the cell (the paper's ratio)", bounds=">= 1")

    def check(self, source: str, context: MethodContext) -> None:
        refuse_volumes("jigsaw", context, f"a {self.grid}x{self.grid}x{self.grid} puzzle cuts the small windows "
                       f"volumes train on into {self.grid ** 3} tiles too small to encode", source)
        if self.grid == 2 and self.permutations > 24:
            raise ConfigError(f"{source}: method.permutations {self.permutations} exceeds the 24 orders of a 2x2 "
                              "grid; use at most 24.")
        if context.window is not None and context.patch is not None:
            try:
                tile_size(context.window, self.grid, self.tile, math.lcm(*context.patch))
            except ConfigError as err:
                raise ConfigError(f"{source}: method.grid / method.tile: {err}") from None


@register_method
class Jigsaw(SSLMethod):
    """Name the permutation that shuffled a window's jittered tiles."""

    name = "jigsaw"
    embedding_pool = "cls"
    card = MethodCard(
        learns="how parts of a scene fit together: which tile lies above, below or beside which (object parts, "
               "field layouts), from tiles encoded on their own",
        cost="~1x (grid^2 tiles of ~1/grid^2 the window each, one encoder pass each)",
        failure_modes="homogeneous or periodic textures (open water, large fields) give tiles with no order; "
                      "tiles shorter than ~2 tokens per side hold too little; 2D only",
        recipes=("recipes/pretext_sentinel2.yaml",), dims="2D")
    Settings = JigsawSettings
    settings: JigsawSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: JigsawSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.multiple_of = math.lcm(*encoder_cfg.patch_size)
        self.register_buffer("perms", permutation_set(s.permutations, s.grid), persistent=False)  # (P, T)
        self.encoder = ViTEncoder(encoder_cfg)
        self.head = mlp_head(s.grid * s.grid * encoder_cfg.embed_dim, s.head_hidden_dim, s.permutations)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, T, C, t, t) tiles in puzzle order -> (B, P) logits."""
        b, t = tiles.shape[:2]
        # each tile encoded on its own, stacked tile by tile (T*B rows: row r is sample r % B, as views are stacked,
        # so stochastic depth's per-sample draws follow each sample: train.module.per_sample_draws)
        cls = self.encoder(tiles.transpose(0, 1).flatten(0, 1))[:, 0]  # (T*B, D)
        return self.head(cls.reshape(t, b, -1).transpose(0, 1).reshape(b, -1))

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        draws = PerSample.from_batch(batch, generator).rand(jigsaw_draws(self.settings.grid))
        tiles, labels = jigsaw_tiles(image, self.perms, draws, self.settings.tile, self.multiple_of, valid=valid)
        return classification_output(self(tiles), labels)
