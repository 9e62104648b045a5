"""Views: shapes and dtypes for any band count, determinism from the rng, the valid mask follows the geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomed_ssl.config import AugmentConfig, DataConfig
from geomed_ssl.views.builder import MAEView, ViewSpec, build_views, resize, sample_crop
from geomed_ssl.errors import ConfigError


def rng(k: int) -> np.random.Generator:
    return np.random.default_rng(k)


@pytest.mark.parametrize("bands", [1, 4, 13, 200])
def test_mae_view_2d_any_band_count(bands):
    view = build_views("mae", DataConfig(patch_size=32), 2)
    image = np.random.default_rng(0).normal(size=(bands, 32, 32)).astype(np.float32)
    out = view(image, np.ones((32, 32), bool), rng(1))
    assert out["image"].shape == (bands, 32, 32) and out["image"].dtype == torch.float32
    assert out["valid"].shape == (32, 32) and out["valid"].dtype == torch.bool


@pytest.mark.parametrize("channels", [1, 2])
def test_mae_view_3d_shapes(channels):
    view = build_views("mae", DataConfig(kind="volume", patch_size=[8, 12, 12]), 3)
    out = view(np.random.default_rng(0).random((channels, 8, 12, 12), dtype=np.float32),
               np.ones((8, 12, 12), bool), rng(2))
    assert out["image"].shape == (channels, 8, 12, 12) and out["image"].dtype == torch.float32
    assert out["valid"].shape == (8, 12, 12) and out["valid"].dtype == torch.bool


def test_same_rng_same_view_and_different_rng_differs():
    view = build_views("mae", DataConfig(patch_size=32), 2)
    image = np.random.default_rng(0).normal(size=(4, 32, 32)).astype(np.float32)
    valid = np.ones((32, 32), bool)
    a, b, c = view(image, valid, rng(7)), view(image, valid, rng(7)), view(image, valid, rng(8))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["valid"], b["valid"])
    assert not torch.equal(a["image"], c["image"])


def corner_case(shape):
    """Band 0 is 1 where valid, 0 where not; the invalid part is an asymmetric corner so flips show."""
    valid = np.ones(shape, bool)
    valid[tuple(slice(0, n // 4) for n in shape)] = False
    valid[(slice(0, shape[0] // 2),) + (slice(0, 1),) * (len(shape) - 1)] = False
    image = np.stack([valid.astype(np.float32), np.random.default_rng(0).random(shape, dtype=np.float32)])
    return image, valid


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 8)])
def test_valid_mask_follows_flips_and_rotations_exactly(shape):
    view = MAEView(shape, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # whole-window crop: only flips / rot90 act
    image, valid = corner_case(shape)
    changed = 0
    for k in range(12):
        out = view(image, valid, rng(k))
        assert torch.equal(out["valid"], out["image"][0] == 1)
        changed += not np.array_equal(out["valid"].numpy(), valid)
    assert changed >= 6  # the geometry really moved


@pytest.mark.parametrize("shape", [(48, 48), (16, 16, 16)])
def test_valid_mask_follows_the_resized_crop(shape):
    view = MAEView(shape)
    cells = np.indices(shape).sum(axis=0) // 2  # coarse structure: 2-pixel diagonal bands
    valid = (np.add.reduce(np.indices(shape) // 8) % 2) == 0  # 8-pixel checkerboard
    image = np.stack([valid.astype(np.float32), cells.astype(np.float32)])
    for k in range(6):
        out = view(image, valid, rng(k))
        img0, ok = out["image"][0], out["valid"]
        assert torch.allclose(img0[ok], torch.ones(int(ok.sum())))  # valid pixels: the nodata fill not blended in
        assert not ok[img0 == 0].any()  # pure-invalid pixels stay invalid


def test_identity_view_returns_tensors_unchanged():
    image = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    valid = np.eye(4, dtype=bool)
    out = build_views("none", DataConfig(patch_size=4), 2)(image, valid, rng(0))
    np.testing.assert_array_equal(out["image"].numpy(), image)
    np.testing.assert_array_equal(out["valid"].numpy(), valid)


def test_sample_crop_respects_scale_and_bounds():
    for k in range(50):
        (r, c), (h, w) = sample_crop((64, 64), (0.2, 1.0), (3 / 4, 4 / 3), rng(k))
        assert 0 <= r and r + h <= 64 and 0 <= c and c + w <= 64
        assert 0.15 <= h * w / 64**2 <= 1.0 and 0.7 <= w / h <= 1.4


def test_resize_2d_matches_per_band_and_nearest_keeps_values():
    a = np.random.default_rng(0).random((300, 10, 12), dtype=np.float32)  # more bands than OpenCV's 4/512 limits
    out = resize(a, (20, 16))
    assert out.shape == (300, 20, 16)
    np.testing.assert_allclose(out[299], resize(a[299:], (20, 16))[0])
    m = (a[:1] > 0.5).astype(np.uint8)
    assert set(np.unique(resize(m, (20, 16), nearest=True))) <= {0, 1}


def test_unknown_view_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown view kind"):
        build_views("simclr", DataConfig(), 2)
    with pytest.raises(ConfigError, match="scale"):
        build_views("mae", DataConfig(), 2, scale=(0.5, 2.0))


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)])
def test_resized_crop_draws_area_or_volume_fraction_the_same_way_in_2d_and_3d(shape):
    fractions = []
    for k in range(400):
        _, sizes = sample_crop(shape, (0.2, 0.6), (1.0, 1.0), rng(k))
        fractions.append(np.prod(sizes) / np.prod(shape))
    fractions = np.array(fractions)
    assert 0.15 < fractions.min() and fractions.max() < 0.68  # the area / volume fraction, not a per-axis scale
    assert abs(fractions.mean() - 0.4) < 0.03  # uniform in [0.2, 0.6] up to rounding to whole pixels


def test_dino_3d_crops_use_the_shared_primitive_and_its_volume_fraction(monkeypatch):
    import geomed_ssl.views.builder as views

    seen = []
    original = views.sample_crop

    def spy(shape, scale, ratio, rng_):
        seen.append((tuple(shape), tuple(scale)))
        return original(shape, scale, ratio, rng_)

    monkeypatch.setattr(views, "sample_crop", spy)
    cfg = DataConfig(kind="volume", patch_size=16, global_crop_size=16, local_crop_size=8, n_local_crops=2)
    out = build_views("dino", cfg, 3)(np.zeros((1, 16, 16, 16), np.float32), np.ones((16,) * 3, bool), rng(0))
    assert [tuple(v.shape) for v in out["views"]["global"] + out["views"]["local"]] == [(1, 16, 16, 16)] * 2 + [
        (1, 8, 8, 8)] * 2
    assert seen == [((16, 16, 16), (0.4, 1.0))] * 2 + [((16, 16, 16), (0.05, 0.4))] * 2


def test_view_spec_of_two_global_crops_gives_two_augmented_views():
    spec = ViewSpec(crops=2)
    out = build_views(spec, DataConfig(patch_size=16), 2)(np.random.default_rng(0).normal(size=(5, 16, 16)).astype(
        np.float32), np.ones((16, 16), bool), rng(3))
    a, b = out["views"]["global"]
    assert a.shape == b.shape == (5, 16, 16) and not torch.equal(a, b) and out["views"]["local"] == []
    assert [tuple(m.shape) for m in out["valid"]["global"]] == [(16, 16)] * 2


def test_augment_section_turns_flips_and_rotations_off():
    image, valid = corner_case((16, 16))
    view = build_views("mae", DataConfig(patch_size=16), 2, AugmentConfig(flip=False, rot90=False), scale=(1.0, 1.0),
                       ratio=(1.0, 1.0))
    for k in range(5):
        out = view(image, valid, rng(k))
        np.testing.assert_array_equal(out["image"].numpy(), image)


def test_views_that_do_not_fit_the_window_are_refused():
    with pytest.raises(ConfigError, match=r"data.global_crop_size \[96, 96\] does not fit in data.patch_size"):
        build_views(ViewSpec(crops=2), DataConfig(patch_size=64, global_crop_size=96), 2)
    with pytest.raises(ConfigError, match="data.local_crop_size .* does not fit in data.global_crop_size"):
        build_views("dino", DataConfig(patch_size=64, global_crop_size=32, local_crop_size=48), 2)
