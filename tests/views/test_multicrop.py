"""Multi-crop views: shapes and dtypes for 4/13/200 bands and 1/2-channel volumes, finite values, determinism."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geomed_ssl.views.multicrop import (MultiCropView, band_dropout, band_gamma, band_intensity, band_jitter,
                                       build_multicrop, solarize, IntensityProbs)
from geomed_ssl.errors import ConfigError


def crops(out: dict) -> list[torch.Tensor]:
    return out["views"]["global"] + out["views"]["local"]


def zscored(c: int, *spatial: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((c, *spatial)) * 1.5).astype(np.float32)


@pytest.mark.parametrize("bands", [4, 13, 200])
def test_2d_views_have_the_right_shapes_dtypes_and_no_nan(bands: int) -> None:
    view = MultiCropView((32, 32), (16, 16), n_local=3)
    valid = np.ones((40, 40), bool)
    valid[:6] = False
    out = view(zscored(bands, 40, 40), valid, np.random.default_rng(0))
    assert [tuple(t.shape) for t in crops(out)] == [(bands, 32, 32)] * 2 + [(bands, 16, 16)] * 3
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in crops(out))
    masks = out["valid"]["global"] + out["valid"]["local"]
    assert [tuple(m.shape) for m in masks] == [(32, 32)] * 2 + [(16, 16)] * 3
    assert all(m.dtype == torch.bool for m in masks)


@pytest.mark.parametrize("channels", [1, 2])
def test_3d_views_have_the_right_shapes_dtypes_and_no_nan(channels: int) -> None:
    view = MultiCropView((16, 16, 16), (8, 8, 8), n_local=2, spatial_dims=3)
    out = view(zscored(channels, 20, 24, 24), np.ones((20, 24, 24), bool), np.random.default_rng(0))
    assert [tuple(t.shape) for t in crops(out)] == [(channels, 16, 16, 16)] * 2 + [(channels, 8, 8, 8)] * 2
    assert all(type(t) is torch.Tensor and t.dtype == torch.float32 and torch.isfinite(t).all() for t in crops(out))
    assert all(m.dtype == torch.bool and m.shape == (8, 8, 8) for m in out["valid"]["local"])


@pytest.mark.parametrize("spatial", [(40, 40), (20, 24, 24)])
def test_same_seed_gives_same_views_and_other_seed_differs(spatial: tuple[int, ...]) -> None:
    nd = len(spatial)
    view = MultiCropView((16,) * nd, (8,) * nd, n_local=2, spatial_dims=nd)
    img, valid = zscored(2, *spatial), np.ones(spatial, bool)
    a, b = view(img, valid, np.random.default_rng(5)), view(img, valid, np.random.default_rng(5))
    c = view(img, valid, np.random.default_rng(6))
    assert all(torch.equal(x, y) for x, y in zip(crops(a), crops(b)))
    assert not all(torch.equal(x, y) for x, y in zip(crops(a), crops(c)))
    assert not torch.equal(a["views"]["global"][0], a["views"]["global"][1])


def test_valid_mask_follows_the_geometry() -> None:
    view = MultiCropView((32, 32), (16, 16), n_local=0, global_scale=(1.0, 1.0))
    img = np.zeros((3, 32, 32), np.float32)
    valid = np.zeros((32, 32), bool)
    valid[:, :16] = True  # left half valid
    out = view(img, valid, np.random.default_rng(0))
    for m in out["valid"]["global"]:
        assert m.sum() == 512  # a full-window crop only flips / rotates the mask


def test_gamma_is_finite_on_z_scored_and_constant_bands() -> None:
    x = np.stack([np.linspace(-4, 4, 64, dtype=np.float32).reshape(8, 8), np.full((8, 8), -2.0, np.float32)])
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = band_gamma(x, rng)
        assert np.isfinite(y).all() and y.min() >= -4 - 1e-5 and y.max() <= 4 + 1e-5
        assert np.allclose(y[1], -2.0)


def test_intensity_ops_are_per_band_and_finite() -> None:
    x = zscored(13, 16, 16)
    rng = np.random.default_rng(1)
    y = band_jitter(x, rng)
    gains = y.reshape(13, -1).std(1) / x.reshape(13, -1).std(1)
    assert np.ptp(gains) > 0.01  # each band its own contrast
    s = solarize(x, np.random.default_rng(2), threshold=(0.5, 0.5))
    assert np.allclose(s[x >= 0.5], 1.0 - x[x >= 0.5]) and np.allclose(s[x < 0.5], x[x < 0.5])
    d = band_dropout(x, np.random.default_rng(3), p=1.0)
    assert (np.abs(d).reshape(13, -1).sum(1) > 0).sum() == 1  # at least one band survives
    every = IntensityProbs(jitter=1, gamma=1, blur=1, noise=1, solarize=1, dropout=1)
    assert np.isfinite(band_intensity(x, rng, every)).all()


def test_build_multicrop_from_data_config_defaults() -> None:
    view = build_multicrop(SimpleNamespace(patch_size=64), 2, patch_size=8)
    assert view.global_size == (64, 64) and view.local_size == (32, 32) and view.n_local == 6
    cfg = SimpleNamespace(patch_size=[32, 32, 32], local_crop_size=16, n_local_crops=4, global_crop_scale=[0.25, 1.0])
    view3 = build_multicrop(cfg, 3)
    assert view3.local_size == (16, 16, 16) and view3.n_local == 4
    with pytest.raises(ConfigError, match="local_crop_scale"):
        MultiCropView((32, 32), (16, 16), local_scale=(0.5, 0.1))


def test_build_multicrop_takes_the_bands_wavelengths_for_the_spectral_shift():
    """It never passed them on, so augment.spectral_shift_p > 0 was refused even with every wavelength known."""
    from geomed_ssl.config import AugmentConfig, DataConfig
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.views.multicrop import build_multicrop

    augment = AugmentConfig(spectral_shift_p=0.5)
    view = build_multicrop(DataConfig(patch_size=32), 2, 4, augment, wavelengths=[0.49, 0.56, 0.66])
    assert view.intensity.wavelengths == [0.49, 0.56, 0.66]
    with pytest.raises(ConfigError, match="spectral_shift_p needs every band's centre wavelength"):
        build_multicrop(DataConfig(patch_size=32), 2, 4, augment)
