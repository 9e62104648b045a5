"""Cross-band prediction: wavelength-ordered splits, their checks, and both directions of the views."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.cross_band import check_split, cross_band_views, split_bands

SHUFFLED = [0.842, 0.49, 1.61, 0.56, 0.665, 2.19]  # band i's centre wavelength (um), not in file order


def test_contiguous_split_takes_the_shorter_wavelength_half() -> None:
    assert split_bands(6, SHUFFLED) == ([1, 3, 4], [0, 2, 5])  # 0.49, 0.56, 0.665 | 0.842, 1.61, 2.19


def test_alternate_split_interleaves_in_wavelength_order() -> None:
    # wavelength order 1, 3, 4, 0, 2, 5: positions 0, 2, 4 against 1, 3, 5, each group sorted by index
    assert split_bands(6, SHUFFLED, "alternate") == ([1, 2, 4], [0, 3, 5])


def test_unknown_wavelengths_fall_back_to_file_order() -> None:
    assert split_bands(5) == ([0, 1, 2], [3, 4])
    assert split_bands(3, [0.49, None, 0.66]) == ([0, 1], [2])


def test_single_band_data_is_refused_saying_why() -> None:
    with pytest.raises(ConfigError, match="at least 2 bands .one to see, one to predict.") as err:
        split_bands(1)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="at least 2 bands"):
        cross_band_views(torch.randn(2, 1, 8, 8), [0], [])


def test_split_leaving_a_side_empty_is_refused() -> None:
    with pytest.raises(ConfigError, match="leaves group B empty") as err:
        check_split(4, [0, 1, 2, 3], [])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("a,b,match", [([0, 1], [1, 2], "share bands"), ([0, 4], [1], r"in \[0, 3\]"),
                                       ([0, 0], [1], "distinct")])
def test_overlapping_or_out_of_range_groups_are_refused(a, b, match) -> None:
    with pytest.raises(ConfigError, match=match):
        check_split(4, a, b)


def test_views_predict_each_group_from_the_other_with_the_hidden_bands_zeroed() -> None:
    x = torch.randn(2, 5, 8, 8, 8)  # works the same on volumes
    forward, backward = cross_band_views(x, [0, 3], [1, 2, 4])
    assert forward.input_bands == [0, 3] and forward.target_bands == [1, 2, 4]
    assert backward.input_bands == [1, 2, 4] and backward.target_bands == [0, 3]
    for view in (forward, backward):
        assert torch.equal(view.target, x[:, view.target_bands])
        assert torch.equal(view.input[:, view.input_bands], x[:, view.input_bands])
        assert not view.input[:, view.target_bands].any()
