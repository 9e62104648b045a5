"""Jigsaw: the greedy max-min permutation set and its stated Hamming distances, jittered tiles, their labels."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.jigsaw import jigsaw_draws, jigsaw_tiles, min_hamming, permutation_set, tile_size


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size,distance", [(9, 9), (10, 8), (17, 8), (18, 7), (84, 7), (85, 6), (100, 6)])
def test_permutation_set_has_the_stated_minimum_hamming_distance(size: int, distance: int) -> None:
    assert min_hamming(permutation_set(100)[:size]) == distance  # smaller sets are prefixes (tested below)


def test_permutation_set_is_fixed_distinct_and_starts_with_the_identity() -> None:
    perms = permutation_set(100)
    assert perms.shape == (100, 9) and torch.equal(perms[0], torch.arange(9))
    assert torch.equal(perms.sort(dim=1).values, torch.arange(9).expand(100, 9))  # every row a permutation
    assert len({tuple(p) for p in perms.tolist()}) == 100
    assert torch.equal(permutation_set(100), perms) and torch.equal(permutation_set(30), perms[:30])


def test_more_permutations_than_the_grid_has_is_refused() -> None:
    assert min_hamming(permutation_set(24, grid=2)) >= 2
    with pytest.raises(ConfigError, match="exceeds the 24 orders"):
        permutation_set(25, grid=2)


def draws(b: int, grid: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, jigsaw_draws(grid), generator=gen(seed))


def cell_index_image(b: int, size: int, grid: int = 3) -> torch.Tensor:
    """(b, 2, size, size): band 0 holds the 3x3 cell index of each pixel, band 1 its row (for offsets)."""
    rows = torch.arange(size).float()
    cell = (torch.arange(size) // (size // grid)).clamp_max(grid - 1)
    index = (cell[:, None] * grid + cell[None, :]).float()
    return torch.stack([index, rows[:, None].expand(size, size)])[None].expand(b, -1, -1, -1)


def test_tiles_follow_their_label_and_stay_inside_their_cells() -> None:
    perms = permutation_set(100)
    tiles, labels = jigsaw_tiles(cell_index_image(16, 48), perms, draws(16), normalize=False)
    assert tiles.shape == (16, 9, 2, 13, 13) and labels.shape == (16,)  # int(16 * 64 / 75)
    # a constant cell index over the whole tile means the tile lies inside one cell; it is the labelled one
    assert torch.equal(tiles[:, :, 0].amin(dim=(2, 3)), tiles[:, :, 0].amax(dim=(2, 3)))
    assert torch.equal(tiles[:, :, 0, 0, 0].long(), perms[labels])


def test_tile_offsets_are_jittered_within_the_cell() -> None:
    tiles, _ = jigsaw_tiles(cell_index_image(64, 48), permutation_set(100), draws(64, seed=1), tile=12, normalize=False)
    first_row = tiles[:, :, 1, 0, 0] % 16  # offset of each tile's first row inside its 16 px cell
    assert first_row.min() == 0 and first_row.max() == 4 and len(first_row.unique()) == 5


def test_tiles_are_standardised_per_band_by_default() -> None:
    tiles, _ = jigsaw_tiles(torch.rand(2, 3, 64, 64) * 100, permutation_set(10), draws(2), multiple_of=4)
    assert tiles.shape[-1] % 4 == 0
    torch.testing.assert_close(tiles.mean(dim=(-2, -1)), torch.zeros(2, 9, 3), atol=1e-4, rtol=0)


def test_grid_larger_than_the_window_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="larger than the") as err:
        tile_size((4, 4), grid=5)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="larger than the"):
        jigsaw_tiles(torch.randn(1, 2, 4, 4), permutation_set(10, grid=5), draws(1, grid=5))


def test_volumes_are_refused_as_2d_only() -> None:
    with pytest.raises(ConfigError, match="2D-only"):
        jigsaw_tiles(torch.randn(1, 1, 24, 24, 24), permutation_set(10), gen())


def test_the_encoder_sees_tiles_stacked_tile_by_tile_and_each_sample_keeps_its_own_tiles() -> None:
    """Rows r of the encoder's batch belong to sample r % B (as stacked views do), so stochastic depth's per-sample
    draws follow each sample under DDP; the head still reads each sample's tiles in puzzle order."""
    from geomed_ssl.methods.jigsaw import Jigsaw
    from geomed_ssl.models.encoder import EncoderConfig

    enc = EncoderConfig(in_chans=2, img_size=(24, 24), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2)
    method = Jigsaw(enc, {"head_hidden_dim": 16, "grid": 2, "permutations": 4}, max_steps=1).eval()
    tiles = torch.randn(3, 4, 2, 8, 8, generator=gen())  # (B, T, C, t, t)
    seen = []
    method.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        logits = method(tiles)
        rows = seen[0]
        assert torch.equal(rows, tiles.transpose(0, 1).flatten(0, 1))  # row r: sample r % 3, tile r // 3
        per_sample = method.encoder(tiles.flatten(0, 1))[:, 0].reshape(3, -1)  # the plain sample-major layout
        assert torch.allclose(logits, method.head(per_sample), atol=1e-6)


def test_a_nodata_collar_does_not_place_a_tile() -> None:
    x = torch.rand(16, 2, 48, 48, generator=gen(4)) + 1
    i = torch.arange(48)
    valid = (i[:, None] + i[None, :] >= 20)[None].expand(16, 48, 48)  # the top-left cell is mostly nodata
    tiles, _ = jigsaw_tiles(x, permutation_set(100), draws(16), valid=valid)
    zero = (tiles == 0).all(dim=2)  # (B, T, t, t)
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # every tile of a sample shares one nodata pattern
    assert bool(zero.any())
    kept = tiles[~zero[:, :, None].expand_as(tiles)].reshape(-1)
    assert abs(float(kept.mean())) < 1e-4  # standardised over the pixels it keeps
    plain = jigsaw_tiles(x, permutation_set(100), draws(16), valid=torch.ones(16, 48, 48, dtype=torch.bool))[0]
    torch.testing.assert_close(plain, jigsaw_tiles(x, permutation_set(100), draws(16))[0], atol=1e-5, rtol=1e-5)
