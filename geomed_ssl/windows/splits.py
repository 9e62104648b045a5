"""Which labelled positions may train and which are held out for testing, beyond a random draw.

``blocks`` tiles each image into ``block_size`` blocks, half of them (seeded) for training: a random pixel split of
one scene puts test pixels right next to training pixels and overstates accuracy. ``images`` holds out whole
images (subjects, scenes): half of them train, the others are only tested on, which is what a model meets on a new
patient or a new scene. Both repair the draw so a class found in two or more units (blocks, images) has training
and test ones, and a class found in one unit trains.

Images that share one label file (one scene at several dates) are one ground: they share blocks, count as one image
for ``images``, and a position trained on at one date is tested at no other date. ``images`` also keeps the label
files of one BIDS subject together (its sessions: :func:`bids_subject`).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Sequence

import numpy as np

from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
SPLITS = ("random", "blocks", "images")
_BIDS_PREFIX = re.compile(r"(sub-[A-Za-z0-9]+)_")
_BIDS_NAME = re.compile(r"(sub-[A-Za-z0-9]+)_(?:[A-Za-z]+-[A-Za-z0-9]+_)*[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*"
                        r"(?:\..*)?")  # entities, then a suffix that starts with a letter (T1w, dseg, T1w_seg)
_SAID_SESSIONS = said_set()


def bids_subject(path: str) -> str | None:
    """The BIDS subject of a file named ``sub-<label>_...``: the path up to its nearest folder of that name
    (``.../sub-01/ses-1/anat/sub-01_ses-1_T1w_seg.nii.gz``), else, for a name as BIDS forms them
    (``sub-<label>_[key-value_...]<suffix>``), its folder and that name (``.../sub-01_ses-1_T1w.nii.gz`` side by
    side); None otherwise. A folder named ``sub-acute``, or files ``sub-acute_000.nii.gz`` numbered in a class of
    that name, make no subject."""
    parts = os.path.abspath(path).split(os.sep)
    found = _BIDS_PREFIX.match(parts[-1])
    if not found:
        return None
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == found.group(1):
            return os.sep.join(parts[:k + 1])
    return os.path.join(os.sep.join(parts[:-1]), found.group(1)) if _BIDS_NAME.fullmatch(parts[-1]) else None


def _block_grid(shape: Sequence[int], block_size: int) -> tuple[int, ...]:
    return tuple(-(-int(s) // block_size) for s in shape)


def _block_of(flat_index: np.ndarray, shape: Sequence[int], block_size: int) -> np.ndarray:
    """Block number (C order over the block grid) of each flat position of an array of ``shape``."""
    coords = np.unravel_index(flat_index, tuple(shape))
    return np.ravel_multi_index(tuple(c // block_size for c in coords), _block_grid(shape, block_size))


def _assign_blocks(n_blocks: int, block: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
    """Half the units (seeded) to training, then repaired so each class spread over >= 2 units has a training
    and a test unit, and a class inside a single unit trains (rarest classes decide last). Where two quick passes
    leave a class unserved (one class's fix undoing another's), :func:`_repair` settles it, moving only units whose
    move leaves every other class served."""
    train, per_class, rng = _quick_passes(n_blocks, block, values, seed)
    if any(_unserved(blocks, train) for blocks in per_class):
        train = _repair(train, per_class, rng)
    return train


def _quick_passes(n_blocks: int, block: np.ndarray, values: np.ndarray, seed: int
                  ) -> tuple[np.ndarray, list[np.ndarray], np.random.Generator]:
    """The seeded half and two passes over the classes, most frequent first: the training flags, each class's
    units, and the generator, for :func:`_repair` to go on drawing from."""
    rng = np.random.default_rng((int(seed) & 0xFFFFFFFF, 0xB10C))
    train = np.zeros(n_blocks, bool)
    train[rng.permutation(n_blocks)[: (n_blocks + 1) // 2]] = True
    classes, counts = np.unique(values, return_counts=True)
    per_class = [np.unique(block[values == c]) for c in classes[np.argsort(-counts, kind="stable")]]
    for _ in range(2):
        for blocks in per_class:
            if blocks.size == 1 or not train[blocks].any():
                train[rng.choice(blocks)] = True
            elif train[blocks].all():
                train[rng.choice(blocks)] = False
    return train, per_class, rng


def _unserved(blocks: np.ndarray, train: np.ndarray, pinned: np.ndarray | None = None) -> bool:
    """A class in ``blocks`` lacks what it should have: its one unit does not train, or (two or more units) none
    trains, or all train while one of them could test (is not ``pinned``)."""
    if blocks.size == 1:
        return not train[blocks[0]]
    flags = train[blocks]
    return not flags.any() or (flags.all() and (pinned is None or not pinned[blocks].all()))


def _repair(start: np.ndarray, per_class: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``start`` moved towards serving every class: units holding a single-unit class train (pinned); a class with
    no training unit gets one, and one whose units all train gives an unpinned one to testing, each preferring a
    unit whose move takes no other class's last training or test unit; until nothing changes. Some layouts cannot
    serve every class (classes over pairs of three images, each pair its own class): the state serving the most
    classes on the way is returned (first those found in one unit: a class never trained on is worse than one not
    tested), never one worse than ``start``."""
    pinned = np.zeros(start.size, bool)
    for blocks in per_class:
        if blocks.size == 1:
            pinned[blocks[0]] = True
    spread = [b for b in per_class if b.size > 1]
    holds: dict[int, list[np.ndarray]] = {}
    for blocks in spread:
        for unit in blocks:
            holds.setdefault(int(unit), []).append(blocks)

    def unserved(flags: np.ndarray) -> tuple[int, int]:  # classes never learnt weigh more than classes untested
        return (sum(not flags[b[0]] for b in per_class if b.size == 1),
                sum(_unserved(b, flags, pinned) for b in per_class))

    def harmless(unit: int, to_train: bool) -> bool:  # no other class loses its last test / training unit
        return all(((train[b] != to_train) & (b != unit)).any() for b in holds.get(unit, []))

    best, fewest = start, unserved(start)
    train = start | pinned
    for _ in range(2 * len(per_class) + 2):
        if (now := unserved(train)) < fewest:
            best, fewest = train.copy(), now
        if now == (0, 0):
            break
        changed = False
        for blocks in spread:
            if not _unserved(blocks, train, pinned):
                continue
            to_train = not train[blocks].any()
            movable = blocks[~train[blocks]] if to_train else blocks[train[blocks] & ~pinned[blocks]]
            safe = [u for u in movable if harmless(int(u), to_train)]
            train[rng.choice(safe or movable)] = to_train
            changed = True
        if not changed:
            break
    return train.copy() if unserved(train) < fewest else best


def _expand(flags: np.ndarray, shape: Sequence[int], block_size: int) -> np.ndarray:
    """A block grid of flags repeated to a bool map of ``shape``."""
    out = flags.reshape(_block_grid(shape, block_size))
    for axis in range(len(shape)):
        out = np.repeat(out, block_size, axis=axis)
    return np.ascontiguousarray(out[tuple(slice(0, s) for s in shape)])


def block_split(shape: Sequence[int], block_size: int, seed: int, labels: np.ndarray | None = None,
                mask: np.ndarray | None = None) -> np.ndarray:
    """Bool map of ``shape`` (2D or 3D): True inside training blocks, False inside test blocks.

    The image is tiled into ``block_size`` blocks, half of them (seeded) for training; with ``labels`` (and their
    labelled ``mask``) the assignment is repaired so every class can give training and test samples.
    """
    n_blocks = int(np.prod(_block_grid(shape, block_size)))
    if labels is not None:
        flat = np.flatnonzero(mask if mask is not None else np.ones(labels.shape, bool))
        train = _assign_blocks(n_blocks, _block_of(flat, shape, block_size), labels.reshape(-1)[flat], seed)
    else:
        train = _assign_blocks(n_blocks, np.zeros(0, np.int64), np.zeros(0, np.int64), seed)
    return _expand(train, shape, block_size)


GROUND_PREFIX = "ground:"  # a ground key (labels.ground_key) given in the place of a label path


def label_groups(paths: Sequence[str], n: int) -> np.ndarray:
    """Per file, the index of the first file with the same label file (or ground key): images sharing a label map
    show the same ground (one scene, several dates). Each file is its own group when the paths are not given."""
    if len(paths) != n:
        return np.arange(n)
    first: dict[str, int] = {}
    keys = [str(p) if str(p).startswith(GROUND_PREFIX) else os.path.realpath(str(p)) for p in paths]
    return np.array([first.setdefault(k, i) for i, k in enumerate(keys)], np.int64)


def _block_offsets(shapes: Sequence[Sequence[int]], block_size: int,
                   group: np.ndarray) -> tuple[np.ndarray, int]:
    """(first block number of each file's block grid, total blocks): files of one label group share one grid."""
    grids = np.array([int(np.prod(_block_grid(s, block_size))) for s in shapes], np.int64)
    own = np.where(group == np.arange(len(shapes)), grids, 0)
    offsets = np.concatenate([[0], np.cumsum(own)[:-1]]).astype(np.int64)
    return offsets[group], int(own.sum())


def _training_blocks(shapes: Sequence[Sequence[int]], block_size: int, seed: int, files: np.ndarray,
                     flats: np.ndarray, values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The training flag of each block over all label groups' block grids (group-major)."""
    offsets, total = _block_offsets(shapes, block_size, group)
    if total < 2:
        raise ConfigError(f"labels.block_size {block_size} leaves one block on {'x'.join(map(str, shapes[0]))}; "
                          "lower labels.block_size so blocks can be split between training and testing.")
    block = np.empty(values.size, np.int64)
    for i, s in enumerate(shapes):
        sel = files == i
        block[sel] = offsets[i] + _block_of(flats[sel], s, block_size)
    return _assign_blocks(total, block, values, seed)


def _training_images(seed: int, files: np.ndarray, values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per file, True when its ground (label group) trains; only grounds with labelled positions are drawn."""
    grounds = np.unique(group[files])
    if grounds.size < 2:
        raise ConfigError("labels.split images (compare: --split images) holds out whole images, and the labelled "
                          "images here are one ground (a single image, or the dates of one label file); give labels "
                          "for two or more images, or use the random or blocks split.")
    unit = np.searchsorted(grounds, group[files])
    train = _assign_blocks(grounds.size, unit, values, seed)
    if train.all():
        alone = [int(c) for c in np.unique(values) if np.unique(unit[values == c]).size == 1]
        raise DataError(f"labels.split images leaves no image to test on: a class found in one image only must "
                        f"train, and classes {alone[:5]} leave every one of the {grounds.size} labelled images "
                        "training. Label those classes in more images, or use the random or blocks split.")
    out = np.zeros(group.size, bool)
    labelled = np.isin(group, grounds)
    out[labelled] = train[np.searchsorted(grounds, group[labelled])]
    return out


def training_maps(split: str, shapes: Sequence[Sequence[int]], block_size: int, seed: int, files: np.ndarray,
                  flats: np.ndarray, values: np.ndarray, paths: Sequence[str] = ()) -> list[np.ndarray] | None:
    """Per label array, a bool map of its shape: True inside its training blocks / in a training image, False where
    it tests; None for the random split. The labelled positions (``files``, ``flats``, ``values``) decide the draw
    (every class gets training and test units where it can)."""
    group = label_groups(paths, len(shapes))
    if split == "blocks":
        train_blocks = _training_blocks(shapes, block_size, seed, files, flats, values, group)
        offsets, _ = _block_offsets(shapes, block_size, group)
        return [_expand(train_blocks[start:start + int(np.prod(_block_grid(s, block_size)))], s, block_size)
                for s, start in zip(shapes, offsets)]
    if split == "images":
        train = _training_images(seed, files, values, _with_subjects(group, paths))
        return [np.full(tuple(s), bool(train[i])) for i, s in enumerate(shapes)]
    return None


def _with_subjects(group: np.ndarray, paths: Sequence[str]) -> np.ndarray:
    """``group`` with the groups of one BIDS subject's label files joined (its sessions hold out together)."""
    out, first = group.copy(), {}
    for i, p in enumerate(paths if len(paths) == len(group) else ()):
        subject = None if str(p).startswith(GROUND_PREFIX) else bids_subject(str(p))
        if subject is not None:
            out[out == out[i]] = first.setdefault(subject, out[i])
    if np.unique(out).size < np.unique(group).size and tuple(out) not in _SAID_SESSIONS:
        _SAID_SESSIONS.add(tuple(out))
        log.info("the images split keeps the label files of one BIDS subject (its sessions) together: %d subjects "
                 "among %d label files", np.unique(out).size, len(group))
    return out


def training_pool(maps: list[np.ndarray] | None, files: np.ndarray, flats: np.ndarray) -> np.ndarray | None:
    """(N,) bool: the labelled position (file, flat index) lies where ``maps`` (``training_maps``) train, so it may
    train and the others are tested; None without maps (the random split: any position may train)."""
    if maps is None:
        return None
    pool = np.empty(files.size, bool)
    for i, train in enumerate(maps):
        sel = files == i
        pool[sel] = train.reshape(-1)[flats[sel]]
    return pool


def ground_keys(files: np.ndarray, flats: np.ndarray, paths: Sequence[str], n_files: int) -> np.ndarray:
    """(N,) int64: one key per place of the ground, shared by the positions of every image of one label file."""
    group = label_groups(paths, n_files)
    return group[files] * (int(flats.max(initial=0)) + 1) + flats
