"""The repair of a blocks / images split: every class in two or more units gets a training and a test unit, and a
class in a single unit trains, whatever the seed, also where one class's fix would undo another's."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.windows.splits import _assign_blocks, _training_images


def pinned(block: np.ndarray, values: np.ndarray) -> set[int]:
    """The units holding a class found in no other unit: they must train."""
    units = [np.unique(block[values == c]) for c in np.unique(values)]
    return {int(u[0]) for u in units if u.size == 1}


def served(train: np.ndarray, block: np.ndarray, values: np.ndarray) -> bool:
    """Every class as the split promises, where it can be (a class whose units are all pinned cannot test)."""
    must = pinned(block, values)
    for c in np.unique(values):
        units = np.unique(block[values == c])
        flags = train[units]
        if units.size == 1:
            if not flags[0]:
                return False
        elif not flags.any() or (flags.all() and not set(units.tolist()) <= must):
            return False
    return True


@pytest.mark.parametrize("seed", range(8))
def test_a_class_found_in_one_image_trains_and_the_other_image_tests(seed: int) -> None:
    """Two images with four shared classes and a fifth in image 1 only: image 1 must train, image 0 test. Before,
    a seed could flip image 1 to test for a shared class, then back, and leave both training: refused as if no
    split existed."""
    shared = np.repeat([3, 17, 200, 201], 5)
    values = np.concatenate([shared, shared, [99] * 4])
    unit = np.concatenate([np.zeros(20, int), np.ones(24, int)])
    files = unit.copy()
    train = _training_images(seed, files, values, np.arange(2))
    assert list(train) == [False, True]


@pytest.mark.parametrize("seed", range(40))
def test_random_block_layouts_are_always_served(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    block = rng.integers(0, n, 60)
    values = rng.integers(0, 6, 60)
    values[:3] = 9  # a rare class in one block
    block[:3] = block[0]
    assert served(_assign_blocks(n, block, values, seed), block, values), (seed, n)
