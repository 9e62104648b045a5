"""Context prediction: centre / neighbour pairs with gap and jitter whose label says the neighbour's direction."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.context import CONTEXT_DRAWS, NEIGHBOURS, context_pairs


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draws(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, CONTEXT_DRAWS, generator=gen(seed))


def coordinate_image(b: int, size: int) -> torch.Tensor:
    """(b, 2, size, size): band 0 the row, band 1 the column of every pixel."""
    r = torch.arange(size).float()
    return torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size)])[None].expand(b, -1, -1, -1)


def test_label_is_the_direction_of_the_neighbour_with_gap_and_bounded_jitter() -> None:
    patch, gap, jitter = 8, 4, 2
    pair = context_pairs(coordinate_image(256, 48), patch, gap, jitter, draws(256), normalize=False)
    assert pair.centre.shape == pair.neighbour.shape == (256, 2, 8, 8) and pair.label.shape == (256,)
    offset = (pair.neighbour[:, :, 0, 0] - pair.centre[:, :, 0, 0]).long()  # (B, 2) corner to corner
    steps = torch.tensor(NEIGHBOURS)[pair.label]
    shake = offset - steps * (patch + gap)
    assert shake.abs().max() == jitter and len(shake.unique()) == 2 * jitter + 1  # jittered, within bounds
    # the oracle reads the label back from the crops alone
    recovered = torch.round(offset.float() / (patch + gap)).long()
    assert torch.equal(recovered, steps)


def test_all_eight_labels_are_drawn() -> None:
    labels = context_pairs(torch.randn(400, 1, 40, 40), 8, 4, 2, draws(400)).label
    counts = torch.bincount(labels, minlength=8)
    assert counts.min() > 25


def test_patches_are_standardised_per_band_by_default() -> None:
    pair = context_pairs(torch.rand(4, 3, 40, 40) * 50 + 10, 8, 4, 2, draws(4))
    torch.testing.assert_close(pair.centre.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-4, rtol=0)


def test_volumes_are_refused_as_2d_only() -> None:
    with pytest.raises(ConfigError, match="2D-only") as err:
        context_pairs(torch.randn(1, 1, 48, 48, 48), 8, 4, 2, draws(1))
    assert "\n" not in str(err.value)


def test_window_too_small_for_the_layout_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 3 x patch"):
        context_pairs(torch.randn(1, 1, 32, 32), 8, 4, 2, draws(1))  # needs 3*8 + 8 + 4 = 36


def test_jitter_larger_than_the_gap_is_refused() -> None:
    with pytest.raises(ConfigError, match="never touch"):
        context_pairs(torch.randn(1, 1, 64, 64), 8, 2, 3, draws(1))


def test_a_nodata_collar_does_not_tell_the_direction() -> None:
    x = torch.rand(64, 2, 40, 40, generator=gen(5)) + 1
    i = torch.arange(40)
    valid = (i[:, None] + i[None, :] >= 24)[None].expand(64, 40, 40)
    pair = context_pairs(x, 8, 4, 1, draws(64), valid=valid)
    centre_zero, neighbour_zero = (pair.centre == 0).all(dim=1), (pair.neighbour == 0).all(dim=1)
    assert torch.equal(centre_zero, neighbour_zero) and bool(centre_zero.any())
    raw = context_pairs(x, 8, 4, 1, draws(64), normalize=False, valid=valid)
    assert torch.equal((raw.centre == 0).all(dim=1), (raw.neighbour == 0).all(dim=1))
    plain = context_pairs(x, 8, 4, 1, draws(64), valid=torch.ones(64, 40, 40, dtype=torch.bool))
    torch.testing.assert_close(plain.centre, context_pairs(x, 8, 4, 1, draws(64)).centre, atol=1e-5, rtol=1e-5)
