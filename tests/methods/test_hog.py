"""MaskFeat's HOG targets: skimage's HOG on one band, per-band / grouped targets per token, 3D icosahedral bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import skimage.feature as skimage_feature  # a [dev] extra: never skipped

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.hog import (cell_histograms, hog, hog_target_dim, hog_targets, icosahedral_axes)


@pytest.mark.parametrize("shape,orientations,ppc,cpb,norm", [
    ((37, 45), 9, (8, 8), (3, 3), "L2-Hys"),  # skimage defaults; rows and columns past the last cell dropped
    ((64, 64), 8, (4, 4), (2, 2), "L1"),
    ((33, 40), 6, (5, 7), (1, 2), "L1-sqrt"),  # odd, non-square cells
    ((32, 32), 9, (8, 8), (2, 2), "L2"),
])
def test_single_band_hog_equals_skimage(shape, orientations, ppc, cpb, norm) -> None:
    image = np.random.default_rng(0).normal(size=shape)
    ref = skimage_feature.hog(image, orientations=orientations, pixels_per_cell=ppc, cells_per_block=cpb,
                              block_norm=norm, feature_vector=False)
    ours = hog(torch.from_numpy(image)[None, None], orientations, ppc, cpb, norm)[0, 0].numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_integer_image_with_gradients_on_bin_edges_equals_skimage() -> None:
    image = np.random.default_rng(1).integers(0, 4, size=(32, 32)).astype(np.float64)  # angles of 0, 45, 90 ...
    ref = skimage_feature.hog(image, orientations=8, pixels_per_cell=(4, 4), cells_per_block=(2, 2),
                              block_norm="L2", feature_vector=False)
    ours = hog(torch.from_numpy(image)[None, None], 8, (4, 4), (2, 2), "L2")[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_token_targets_are_skimage_blocks_at_token_positions() -> None:
    # a 8 px token of 4 px cells is one 2x2-cell block; skimage's blocks slide by one cell, tokens by two
    image = np.random.default_rng(2).normal(size=(32, 48)).astype(np.float32)
    ref = skimage_feature.hog(image.astype(np.float64), orientations=9, pixels_per_cell=(4, 4),
                              cells_per_block=(2, 2), block_norm="L2", feature_vector=False)[::2, ::2]
    targets = hog_targets(torch.from_numpy(image)[None, None], patch=(8, 8), cell=(4, 4), block_norm="L2")
    assert targets.shape == (1, 4 * 6, hog_target_dim((8, 8), (4, 4), 1))
    np.testing.assert_allclose(targets[0].reshape(4, 6, 2, 2, 9).numpy(), ref, atol=1e-5)


def test_targets_are_per_band_and_band_groups_use_each_group_mean() -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    every = hog_targets(x, (8, 8))  # default cell (4, 4): 4 cells x 9 bins per band
    assert every.shape == (2, 4, 3 * 4 * 9)
    for band in range(3):
        alone = hog_targets(x[:, band:band + 1], (8, 8))
        torch.testing.assert_close(every.reshape(2, 4, 3, 36)[:, :, band], alone[..., :36])
    grouped = hog_targets(x, (8, 8), band_groups=[[0, 2], [1]])
    torch.testing.assert_close(grouped[..., :36], hog_targets(x[:, [0, 2]].mean(1, keepdim=True), (8, 8)))


def test_each_token_band_block_has_unit_l2_norm() -> None:
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    blocks = hog_targets(x, (8, 8)).reshape(1, 4, 2, -1)
    torch.testing.assert_close(blocks.norm(dim=-1), torch.ones(1, 4, 2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 0.5)])
def test_3d_ramp_along_an_icosahedral_axis_votes_that_axis_from_every_interior_voxel(spacing) -> None:
    axes = icosahedral_axes()
    d, h, w = torch.meshgrid(*(torch.arange(8.0, dtype=torch.float64),) * 3, indexing="ij")
    s = (1.0, 1.0, 1.0) if spacing is None else spacing
    for k in range(10):  # a ramp in physical coordinates whose gradient points along axis k
        ramp = axes[k, 0] * d * s[0] + axes[k, 1] * h * s[1] + axes[k, 2] * w * s[2]
        hist = cell_histograms(ramp[None, None], (8, 8, 8), spacing=spacing)[0, 0, 0, 0, 0]  # (10,)
        # the 6^3 interior voxels all vote |gradient| = 2 into bin k (face voxels miss a difference, so vary)
        assert int(hist.argmax()) == k
        assert float(hist[k]) >= 6**3 * 2 / 8**3 - 1e-9


def test_3d_targets_have_ten_bins_per_cell_and_refuse_2d_orientation_counts() -> None:
    v = torch.randn(2, 4, 16, 16, 16)
    assert hog_targets(v, (8, 8, 8)).shape == (2, 8, 4 * 8 * 10)
    with pytest.raises(ConfigError, match="icosahedral"):
        hog_targets(v, (8, 8, 8), orientations=9)


def test_cell_that_does_not_divide_the_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="must divide the token patch") as err:
        hog_targets(torch.randn(1, 1, 16, 16), (8, 8), cell=(3, 3))
    assert "\n" not in str(err.value)


def test_unknown_block_norm_is_refused() -> None:
    with pytest.raises(ConfigError, match="L2-Hys"):
        hog_targets(torch.randn(1, 1, 16, 16), (8, 8), block_norm="L3")


def test_3d_without_spacing_bins_anisotropic_voxels_by_voxel_direction() -> None:
    axes, s = icosahedral_axes(), (3.0, 1.0, 0.5)
    d, h, w = torch.meshgrid(*(torch.arange(8.0, dtype=torch.float64),) * 3, indexing="ij")
    wrong = 0
    for k in range(10):
        ramp = axes[k, 0] * d * s[0] + axes[k, 1] * h * s[1] + axes[k, 2] * w * s[2]
        wrong += int(cell_histograms(ramp[None, None], (8, 8, 8))[0, 0, 0, 0, 0].argmax()) != k
    assert wrong > 0  # so the spacing argument above is what makes the physical direction come out


def test_the_edge_of_the_nodata_fill_is_no_gradient() -> None:
    """A flat, fully valid token beside nodata (zero-filled) has no edge of its own: with the valid mask its HOG
    is zero, without it the fill's edge would be its target."""
    x = torch.full((1, 1, 8, 16), 3.0)
    valid = torch.ones(1, 8, 16, dtype=torch.bool)
    valid[:, :, 8:] = False  # the right token is nodata
    x = x * valid[:, None]
    blind = hog_targets(x, (8, 8))
    seen = hog_targets(x, (8, 8), valid=valid)
    assert float(blind[0, 0].norm()) > 0.9 and float(seen[0, 0].abs().max()) == 0.0
    inside = torch.randn(1, 1, 8, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hog_targets(inside, (8, 8), valid=torch.ones(1, 8, 16, dtype=torch.bool)),
                               hog_targets(inside, (8, 8)))  # every pixel valid: skimage's HOG unchanged
