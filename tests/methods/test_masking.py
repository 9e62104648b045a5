"""Pure masking / patchify helpers: any band count, 2D and 3D; blockwise (BEiT / iBOT) masks."""

from __future__ import annotations

import math

import pytest
import torch

from geomed_ssl.methods.masking import (block_mask, ibot_masks, mask_to_image, num_keep, patchify, random_masking,
                                        unpatchify)


@pytest.mark.parametrize("bands", [1, 4, 13, 200])
@pytest.mark.parametrize("spatial,patch", [((16, 24), (4, 8)), ((8, 8, 12), (2, 4, 4))])
def test_patchify_unpatchify_round_trip(bands, spatial, patch):
    x = torch.randn(2, bands, *spatial)
    patches = patchify(x, patch)
    grid = tuple(s // p for s, p in zip(spatial, patch))
    assert patches.shape == (2, torch.Size(grid).numel(), torch.Size(patch).numel() * bands)
    assert torch.equal(unpatchify(patches, patch, grid), x)


def test_patchify_3d_is_channel_last_inside_patch():
    x = torch.randn(1, 3, 4, 4, 6)
    patch, grid = (2, 2, 3), (2, 2, 2)
    patches = patchify(x, patch)
    for gd, gh, gw in [(0, 0, 0), (1, 0, 1), (1, 1, 1)]:
        n = (gd * grid[1] + gh) * grid[2] + gw
        for i, j, k, c in [(0, 0, 0, 0), (1, 0, 2, 1), (1, 1, 1, 2)]:
            v = ((i * patch[1] + j) * patch[2] + k) * 3 + c
            assert patches[0, n, v] == x[0, c, gd * 2 + i, gh * 2 + j, gw * 3 + k]


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.6, 0.9])
def test_masking_keeps_int_of_n_times_one_minus_ratio(ratio):
    tokens = torch.randn(5, 64, 8)
    kept, mask, ids_restore = random_masking(tokens, ratio)
    keep = int(64 * (1 - ratio))
    assert num_keep(64, ratio) == keep
    assert kept.shape == (5, keep, 8)
    assert torch.equal((mask == 0).sum(dim=1), torch.full((5,), keep))
    for b in range(5):  # the kept tokens are exactly the unmasked ones
        visible = tokens[b, mask[b] == 0]
        assert torch.equal(torch.sort(kept[b].sum(-1)).values, torch.sort(visible.sum(-1)).values)


def test_masking_keeps_at_least_one_token():
    kept, mask, _ = random_masking(torch.randn(2, 3, 4), 0.9)
    assert kept.shape[1] == 1 and mask.sum() == 4


def test_same_noise_gives_same_mask_and_low_noise_is_kept():
    tokens = torch.randn(3, 16, 4)
    noise = torch.rand(3, 16)
    a = random_masking(tokens, 0.75, noise)
    b = random_masking(tokens.clone(), 0.75, noise.clone())
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and torch.equal(a[0], b[0])
    lowest = noise.argsort(dim=1)[:, :4]
    assert torch.all(a[1].gather(1, lowest) == 0)
    other = random_masking(tokens, 0.75, torch.rand(3, 16, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(other[1], a[1])


def test_ids_restore_unshuffles():
    tokens = torch.randn(2, 10, 3)
    kept, mask, ids_restore = random_masking(tokens, 0.5)
    shuffled = torch.cat([kept, torch.zeros(2, 5, 3)], dim=1)
    restored = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, 3))
    assert torch.equal(restored[mask == 0], tokens[mask == 0])


def test_mask_to_image_marks_masked_patches():
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # grid 2x2
    img = mask_to_image(mask, (2, 3), (2, 2))
    assert img.shape == (1, 4, 6) and img.dtype == torch.bool
    assert img[0, :2, :3].all() and not img[0, :2, 3:].any() and img[0, 2:, 3:].all()


@pytest.mark.parametrize("grid", [(8, 8), (4, 6, 6)])
def test_block_masks_reach_the_target_on_2d_and_3d_grids(grid: tuple[int, ...]) -> None:
    n = math.prod(grid)
    for target in (int(0.1 * n), int(0.5 * n)):
        mask = block_mask(grid, target, torch.Generator().manual_seed(target))
        assert mask.shape == grid and abs(int(mask.sum()) - target) <= max(2, target // 10)


def test_ibot_masks_follow_probability_and_ratio_range() -> None:
    masks = ibot_masks(400, (8, 8), (0.1, 0.5), 0.5, torch.Generator().manual_seed(0))
    frac = masks.flatten(1).float().mean(1)
    masked = frac > 0
    assert 0.4 < masked.float().mean() < 0.6
    assert frac[masked].min() >= 0.05 and frac[masked].max() <= 0.55
