"""The repair of a blocks / images split: every class in two or more units gets a training and a test unit, and a
class in a single unit trains, whatever the seed, also where one class's fix would undo another's."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.windows.splits import _assign_blocks, _quick_passes, _training_images


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


def two_passes(n: int, block: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
    """The draw and two quick repair passes alone (the whole rule before the full repair)."""
    return _quick_passes(n, block, values, seed)[0]


def unserved(train: np.ndarray, block: np.ndarray, values: np.ndarray) -> int:
    must, count = pinned(block, values), 0
    for c in np.unique(values):
        units = np.unique(block[values == c])
        flags = train[units]
        if units.size == 1:
            count += not flags[0]
        else:
            count += (not flags.any()) or (flags.all() and not set(units.tolist()) <= must)
    return count


@pytest.mark.parametrize("seed", range(0, 2000, 37))
def test_a_layout_no_split_serves_fully_is_left_no_worse_than_the_quick_passes_left_it(seed: int) -> None:
    """Classes over the pairs of three images (each pair its own class) cannot all have a training and a test image:
    the repair keeps the state that served the most, never worse than the two quick passes."""
    block = np.array([1, 2, 1, 2, 0, 1, 0, 2])
    values = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    quick = two_passes(3, block, values, seed)
    assert unserved(_assign_blocks(3, block, values, seed), block, values) <= unserved(quick, block, values)


def test_a_class_found_in_one_block_trains_even_where_no_split_serves_every_class() -> None:
    """Both states left one class unserved; the repair had kept the one where the class in block 1 alone never
    trains (a class the model cannot learn is worse than one it cannot be tested on)."""
    block = np.array([2, 3, 1, 1, 1, 3, 0, 2, 0, 3])
    values = np.array([0, 2, 1, 1, 3, 4, 0, 2, 3, 2])
    assert _assign_blocks(4, block, values, 411)[1]
