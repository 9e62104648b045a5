"""Band-safe intensity augmentations: per-band or shared factors, the spectral shift, 2D and 3D alike."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.config import AugmentConfig
from geomed_ssl.views.augment import Intensity, IntensityProbs, band_jitter, gaussian_blur, spectral_shift
from geomed_ssl.errors import ConfigError


def zscored(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_shared_jitter_gives_every_band_the_same_gain() -> None:
    x = zscored(13, 16, 16)
    y = band_jitter(x, np.random.default_rng(1), per_band=False)
    gains = (y - y.reshape(13, -1).mean(1)[:, None, None]).reshape(13, -1).std(1) / x.reshape(13, -1).std(1)
    np.testing.assert_allclose(gains, gains[0], rtol=1e-4)


def test_spectral_shift_of_zero_keeps_the_spectrum_and_moves_towards_the_neighbour() -> None:
    x = np.stack([np.full((4, 4), v, np.float32) for v in (0.0, 1.0, 2.0)])  # bands at 0.5, 0.6, 0.7 um
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(spectral_shift(x, rng, [0.5, 0.6, 0.7], 0.0), x)
    shifted = spectral_shift(x, np.random.default_rng(0), [0.5, 0.6, 0.7], 0.05)
    delta = np.random.default_rng(0).uniform(-0.05, 0.05)
    expected = np.clip(np.array([0.5, 0.6, 0.7]) + delta, 0.5, 0.7)  # linear spectrum: value = (wavelength-0.5)*10
    np.testing.assert_allclose(shifted[:, 0, 0], (expected - 0.5) * 10, atol=1e-5)


def test_spectral_shift_reads_bands_in_any_order() -> None:
    x = np.stack([np.full((2, 2), v, np.float32) for v in (2.0, 0.0, 1.0)])  # wavelengths 0.7, 0.5, 0.6
    out = spectral_shift(x, np.random.default_rng(3), [0.7, 0.5, 0.6], 0.0)
    np.testing.assert_allclose(out, x)


def test_spectral_shift_without_wavelengths_is_refused() -> None:
    with pytest.raises(ConfigError, match="augment.spectral_shift_p needs every band's centre wavelength.*1"):
        Intensity(AugmentConfig(spectral_shift_p=0.5), wavelengths=[0.5, None])
    assert Intensity(AugmentConfig(spectral_shift_p=0.0), wavelengths=None).base.spectral == 0


@pytest.mark.parametrize("shape", [(3, 24, 24), (2, 12, 12, 12)])
def test_every_op_runs_on_2d_and_3d_with_the_same_draws_for_the_same_seed(shape) -> None:
    every = IntensityProbs(jitter=1, gamma=1, blur=1, noise=1, solarize=1, dropout=1, spectral=1)
    ops = Intensity(AugmentConfig(spectral_shift_p=1.0), wavelengths=list(np.linspace(0.5, 0.9, shape[0])))
    x = zscored(*shape)
    a, b = ops(x, np.random.default_rng(7), every), ops(x, np.random.default_rng(7), every)
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_blur_smooths_every_band_alike_in_2d() -> None:
    x = np.zeros((2, 15, 15), np.float32)
    x[:, 7, 7] = 1.0
    y = gaussian_blur(x, np.random.default_rng(0), sigma=(1.0, 1.0))
    np.testing.assert_allclose(y[0], y[1])
    assert y[0, 7, 7] < 0.5 and y.sum() == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("shape", [(2, 24, 24), (2, 12, 12, 12)])
def test_the_nodata_fill_does_not_darken_valid_pixels_or_move_a_bands_statistics(shape):
    """Blur convolved over the 0-filled nodata (valid 2.0 became 1.27 beside it), and jitter / gamma took their
    pivot and range from means and extremes that counted the fill."""
    from geomed_ssl.views.augment import band_gamma

    x = np.full(shape, 2.0, np.float32)
    valid = np.ones(shape[1:], bool)
    valid[:shape[1] // 3] = False
    x[:, ~valid] = 0.0  # as normalise feeds nodata
    blurred = gaussian_blur(x, np.random.default_rng(0), (1.5, 1.5), valid)
    np.testing.assert_allclose(blurred[:, valid], 2.0, rtol=1e-5)
    jittered = band_jitter(x, np.random.default_rng(0), brightness=0.0, contrast=0.5, valid=valid)
    np.testing.assert_allclose(jittered[:, valid], 2.0, rtol=1e-5)  # a constant band about its own mean: unchanged
    x[1, valid] = np.linspace(1.0, 3.0, int(valid.sum()), dtype=np.float32)
    gamma = band_gamma(x, np.random.default_rng(0), (2.0, 2.0), valid=valid)
    assert gamma[1, valid].min() == pytest.approx(1.0) and gamma[1, valid].max() == pytest.approx(3.0)


def test_a_resized_crop_beside_nodata_keeps_the_valid_pixels_values():
    from geomed_ssl.views.builder import resized_crop

    image = np.full((1, 32, 32), 5.0, np.float32)
    valid = np.ones((32, 32), bool)
    valid[:, :10] = False
    image[:, ~valid] = 0.0
    for k in range(10):
        img, ok = resized_crop(image, valid, (24, 24), (0.3, 0.9), (0.75, 1.333), np.random.default_rng(k))
        np.testing.assert_allclose(img[0][ok], 5.0, rtol=1e-5)
