"""Batched crops at per-crop corners and per-crop standardisation, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.methods.crops import crop_at, standardize


@pytest.mark.parametrize("spatial,size", [((12, 10), (4, 3)), ((6, 8, 7), (2, 3, 4))])
def test_crops_equal_slicing_of_the_indexed_sample(spatial, size) -> None:
    x = torch.randn(3, 2, *spatial)
    g = torch.Generator().manual_seed(0)
    starts = torch.stack([torch.randint(0, s - k + 1, (5,), generator=g) for s, k in zip(spatial, size)], dim=1)
    index = torch.tensor([2, 0, 1, 2, 0])
    crops = crop_at(x, starts, size, index)
    assert crops.shape == (5, 2, *size)
    for m in range(5):
        box = tuple(slice(int(a), int(a) + k) for a, k in zip(starts[m], size))
        assert torch.equal(crops[m], x[(int(index[m]), slice(None), *box)])


def test_crop_leaving_the_window_is_an_error() -> None:
    with pytest.raises(ValueError, match="leaves"):
        crop_at(torch.randn(1, 1, 8, 8), torch.tensor([[5, 0]]), (4, 4))


def test_standardize_gives_each_crop_band_zero_mean_unit_std() -> None:
    out = standardize(torch.rand(4, 3, 5, 6) * 30 + 2)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1), unbiased=False), torch.ones(4, 3), atol=1e-4, rtol=0)
