"""Context-encoder inpainting: the central region of 2D and 3D windows, in pixels and in whole tokens."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.inpainting import center_box, center_mask, center_token_mask, hide_center
from geomed_ssl.methods.masking import mask_to_image


def test_half_fraction_hides_the_central_half_of_each_side() -> None:
    assert center_box((64, 64), 0.5) == (slice(16, 48), slice(16, 48))
    mask = center_mask((64, 64), 0.5)
    assert mask.sum() == 32 * 32 and mask[16:48, 16:48].all()


@pytest.mark.parametrize("window,patch", [((64, 48), (8, 8)), ((32, 32, 32), (8, 8, 8)), ((24, 40, 40), (4, 8, 8))])
def test_token_mask_covers_exactly_the_pixel_region(window, patch) -> None:
    grid = tuple(w // p for w, p in zip(window, patch))
    tokens = center_token_mask(window, patch, 0.5)
    assert tokens.shape == (torch.Size(grid).numel(),)
    assert torch.equal(mask_to_image(tokens[None], patch, grid)[0], center_mask(window, 0.5, patch))


def test_hide_center_fills_only_the_region() -> None:
    x = torch.randn(2, 3, 16, 16, 16) + 5
    hidden, mask = hide_center(x, 0.5, (4, 4, 4))
    assert not hidden[..., mask].any() and torch.equal(hidden[..., ~mask], x[..., ~mask])


@pytest.mark.parametrize("fraction,match", [(0.0, r"in \(0, 1\)"), (1.0, r"in \(0, 1\)"),
                                            (0.05, "hides 0 of 4 tokens")])
def test_fractions_hiding_nothing_or_everything_are_refused(fraction: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        center_box((32, 32), fraction, (8, 8))
    assert "\n" not in str(err.value)
