"""Rotation prediction: quarter turns in 2D and about a chosen axis of volumes, labels readable by an oracle."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.rotation import rotation_batch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draws(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One uniform draw per sample of ``x``."""
    return torch.rand(x.shape[0], generator=gen(seed))


def brightest_side(x: torch.Tensor) -> torch.Tensor:
    """Oracle: 0 top, 1 left, 2 bottom, 3 right: where a window that was bright at the top now has its light,
    i.e. the counter-clockwise quarter turns of torch.rot90."""
    m = x.mean(dim=1)  # (B, H, W)
    sides = torch.stack([m[:, 0].mean(-1), m[:, :, 0].mean(-1), m[:, -1].mean(-1), m[:, :, -1].mean(-1)], dim=1)
    return sides.argmax(dim=1)


def test_labels_are_recoverable_from_structured_windows() -> None:
    bright_top = torch.linspace(1, 0, 16)[:, None].expand(16, 16)
    x = bright_top[None, None].expand(200, 3, 16, 16) + 0.05 * torch.randn(200, 3, 16, 16, generator=gen(1))
    rotated, labels = rotation_batch(x, draws(x))
    assert torch.equal(brightest_side(rotated), labels)
    assert len(labels.unique()) == 4


def test_the_same_oracle_is_near_chance_on_rotation_invariant_noise() -> None:
    rotated, labels = rotation_batch(torch.randn(800, 1, 16, 16, generator=gen(2)), torch.rand(800, generator=gen()))
    accuracy = (brightest_side(rotated) == labels).float().mean()
    assert 0.18 < accuracy < 0.32


def test_all_rotations_mode_returns_every_turn_of_every_sample() -> None:
    x = torch.randn(3, 2, 8, 8)
    rotated, labels = rotation_batch(x, all_rotations=True)
    assert rotated.shape == (12, 2, 8, 8) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):
        assert torch.equal(rotated[3 * k: 3 * k + 3], torch.rot90(x, k, (2, 3)))


@pytest.mark.parametrize("axis,plane", [(0, (3, 4)), (1, (2, 4)), (2, (2, 3))])
def test_volumes_turn_about_the_chosen_axis(axis: int, plane: tuple[int, int]) -> None:
    x = torch.randn(6, 1, 8, 8, 8)
    rotated, labels = rotation_batch(x, draws(x), axis=axis)
    for i in range(6):
        assert torch.equal(rotated[i], torch.rot90(x[i:i + 1], int(labels[i]), plane)[0])


def test_non_square_rotation_plane_is_refused() -> None:
    with pytest.raises(ConfigError, match="square plane") as err:
        rotation_batch(torch.randn(1, 1, 8, 16), torch.rand(1))
    assert "\n" not in str(err.value)
    rotation_batch(torch.randn(1, 1, 4, 8, 8), torch.rand(1), axis=0)  # the turned (H, W) plane is square: fine
    with pytest.raises(ConfigError, match="square plane"):
        rotation_batch(torch.randn(1, 1, 4, 8, 8), torch.rand(1), axis=1)


def test_axis_is_refused_on_2d_and_out_of_range_on_volumes() -> None:
    with pytest.raises(ConfigError, match="for volumes"):
        rotation_batch(torch.randn(1, 1, 8, 8), torch.rand(1), axis=0)
    with pytest.raises(ConfigError, match="0, 1 or 2"):
        rotation_batch(torch.randn(1, 1, 8, 8, 8), torch.rand(1), axis=3)


def collar(b: int, size: int, width: int = 6) -> torch.Tensor:
    """(b, size, size) valid masks with a nodata triangle in the top-left corner (a scene's collar)."""
    i = torch.arange(size)
    return (i[:, None] + i[None, :] >= width)[None].expand(b, size, size)


def test_a_nodata_collar_does_not_give_the_turn_away() -> None:
    x = torch.randn(400, 2, 16, 16, generator=gen(3)) + 5  # no valid pixel is 0
    valid = collar(400, 16)
    # where the collar ends up would name the turn if the windows were turned as they are
    leaked, labels = rotation_batch(torch.where(valid[:, None], x, 0.0), draws(x))
    corner = torch.stack([leaked[:, 0, 0, 0], leaked[:, 0, -1, 0], leaked[:, 0, -1, -1], leaked[:, 0, 0, -1]], 1)
    assert torch.equal((corner == 0).float().argmax(dim=1), labels)
    rotated, labels = rotation_batch(x, draws(x), valid=valid)
    zero = (rotated == 0).all(dim=1)
    assert torch.equal(zero, zero[:1].expand_as(zero))  # one nodata pattern whatever the turn
    assert bool(zero[0][~valid[0]].all()) and len(labels.unique()) == 4
    kept = rotation_batch(x, draws(x), valid=torch.ones(400, 16, 16, dtype=torch.bool))[0]
    assert torch.equal(kept, rotation_batch(x, draws(x))[0])  # nothing is lost where every pixel is valid
