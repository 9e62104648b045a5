"""Classes and draws: the class map of a task's label values, every labelled position of its label arrays, and k
labels per class or a fraction of each class drawn from them, seeded per class (:mod:`geomed_ssl.labels.sampling`
decides which positions they are drawn from and keeps the draw).

Rare classes keep half of their labels for testing: ``k`` per class takes ``min(k, n_c // 2)`` of a class with
``n_c`` labels and says so in the notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from geomed_ssl.errors import DataError

Names = Mapping[int, str] | None

__all__ = ["ClassMap", "Names", "class_ids", "labelled_pixels", "sample_fraction", "sample_per_class",
           "stratified_subset", "unique_ints"]


# -- classes ----------------------------------------------------------------------------------------------------
def class_ids(labels_list: Sequence[np.ndarray], ignore_value: int | None = 0,
              masks: Sequence[np.ndarray] | None = None) -> list[int]:
    """Sorted class values present (under ``masks`` if given, else every value but ``ignore_value``)."""
    found: set[int] = set()
    for i, labels in enumerate(labels_list):
        vals = unique_ints(labels[masks[i]] if masks is not None else labels)
        found.update(int(v) for v in vals)
    if masks is None and ignore_value is not None:
        found.discard(int(ignore_value))
    return sorted(found)


@dataclass(frozen=True)
class ClassMap:
    """Class values <-> contiguous indices 0..K-1, with display names."""

    values: tuple[int, ...]
    names: tuple[str, ...]
    folders: bool = False  # the names are class folders' or a classes CSV's (the values their indices): by name alone

    @classmethod
    def build(cls, values: Sequence[int], names: Names | Sequence[str] = None) -> ClassMap:
        """``names``: a {value: name} mapping, or a list aligned with ``values``; missing names are the values."""
        values = tuple(sorted(int(v) for v in values))
        if names is not None and not isinstance(names, Mapping):
            if len(names) != len(values):
                raise DataError(f"{len(names)} class names for {len(values)} classes {list(values)}.")
            names = dict(zip(values, names))
        return cls(values, tuple(str((names or {}).get(v, v)) for v in values))

    def __len__(self) -> int:
        return len(self.values)

    def encode(self, labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Class values -> indices (int64); unknown values and ``~mask`` -> -1."""
        vals = np.asarray(self.values, np.int64)
        idx = np.clip(np.searchsorted(vals, labels), 0, len(vals) - 1)
        out = np.where(vals[idx] == labels, idx, -1).astype(np.int64)
        if mask is not None:
            out[~mask] = -1
        return out

    def decode(self, index: np.ndarray) -> np.ndarray:
        """Indices 0..K-1 -> class values (int64)."""
        return np.asarray(self.values, np.int64)[np.asarray(index)]

    def label(self, value: int) -> str:
        """'class 9 (Oats)' or 'class 9'; for named classes (folders, a classes CSV) "class '10'"."""
        name = self.names[self.values.index(value)] if value in self.values else str(value)
        if self.folders:
            return f"class '{name}'"
        return f"class {value}" + (f" ({name})" if name != str(value) else "")

    @classmethod
    def of_folders(cls, names: Sequence[str] | None) -> ClassMap | None:
        """The map of a folder-per-class dataset: index i is folder ``names[i]`` (None without names)."""
        if names is None:
            return None
        return cls(tuple(range(len(names))), tuple(names), folders=True)


# -- sampling ---------------------------------------------------------------------------------------------------
def labelled_pixels(labels_list: Sequence[np.ndarray],
                    masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every labelled position of many label arrays: (file_index int32, flat_index int64 (C order), values int64)."""
    files, flats, values = [], [], []
    for i, (labels, mask) in enumerate(zip(labels_list, masks)):
        flat = np.flatnonzero(mask).astype(np.int64)
        files.append(np.full(flat.size, i, np.int32))
        flats.append(flat)
        values.append(labels.reshape(-1)[flat].astype(np.int64))
    cat = lambda a, t: np.concatenate(a) if a else np.zeros(0, t)  # noqa: E731
    return cat(files, np.int32), cat(flats, np.int64), cat(values, np.int64)


def unique_ints(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` of integer values, by counting where their range is small (a dense label map of a whole
    scene holds tens of millions of labels of a few classes: counting them is far faster than sorting them)."""
    v = np.asarray(values).reshape(-1)
    if v.size and v.dtype.kind in "iu" and v.dtype != np.uint64:  # (bincount takes what casts to int64)
        lo, hi = int(v.min()), int(v.max())
        if hi - lo < 1 << 20:
            counts = np.zeros(hi - lo + 1, np.int64)
            for i in range(0, v.size, 1 << 24):  # bincount copies its input as int64: 16 M values at a time
                part = v[i : i + (1 << 24)]
                counts += np.bincount(part.astype(np.int64) - lo if lo else part, minlength=hi - lo + 1)
            return (np.flatnonzero(counts) + lo).astype(v.dtype)
    return np.unique(v)


def _narrow(values: np.ndarray) -> np.ndarray:
    """Integer ``values`` in the narrowest dtype of 16 bits or fewer that holds them, else as they are: a stable sort
    of those is a radix sort (the same order, a stable order being unique, far faster)."""
    if values.size and values.dtype.kind in "iu":
        lo, hi = int(values.min()), int(values.max())
        for dtype in (np.uint8, np.int8, np.uint16, np.int16):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return values.astype(dtype)
    return values


def _groups(values: np.ndarray, pool: np.ndarray | None) -> dict[int, np.ndarray]:
    """{class value: sorted indices into ``values`` (inside ``pool`` if given)}; every class present appears."""
    narrow = _narrow(np.asarray(values))
    order = np.argsort(narrow, kind="stable")
    ordered = narrow[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]])) if ordered.size else order[:0]
    out = {}
    for c, idx in zip(ordered[starts], np.split(order, starts[1:])):
        out[int(c)] = idx[pool[idx]] if pool is not None else idx
    return out


def _take(idx: np.ndarray, n: int, seed: int, c: int) -> np.ndarray:
    rng = np.random.default_rng((int(seed) & 0xFFFFFFFF, int(c) & 0xFFFFFFFF))
    return np.sort(rng.choice(idx, size=n, replace=False)) if n < idx.size else idx


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def sample_per_class(values: np.ndarray, k: int, seed: int, names: Names | ClassMap = None, unit: str = "pixel",
                     pool: np.ndarray | None = None, pool_name: str = "blocks") -> tuple[np.ndarray, list[str]]:
    """Indices (sorted) of ``k`` labelled items per class, and notes on classes that got fewer.

    Without ``pool`` the rest is the test set, so a class with n labels gives min(k, n // 2): half stay for testing.
    With ``pool`` (bool per item: in the training ``pool_name``, blocks or images) only pool items are drawn, up to
    all of them.
    """
    cmap = names if isinstance(names, ClassMap) else ClassMap.build(unique_ints(values), names)
    chosen, notes = [], []
    for c, idx in _groups(np.asarray(values), pool).items():
        n_c = idx.size
        n = min(k, n_c // 2) if pool is None else min(k, n_c)
        where = "" if pool is None else f" in training {pool_name}"
        if n < k and n_c == 0:
            notes.append(f"{cmap.label(c)}: no labelled {unit}s{where}, took none")
        elif n < k and pool is None:
            notes.append(f"{cmap.label(c)}: {_plural(n_c, 'labelled ' + unit)}, took {n} instead of {k} so half "
                         "stay for testing")
        elif n < k:
            notes.append(f"{cmap.label(c)}: {_plural(n_c, 'labelled ' + unit)}{where}, took all {n} instead of {k}")
        chosen.append(_take(idx, n, seed, c))
    return (np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)), notes


def sample_fraction(values: np.ndarray, fraction: float, seed: int, names: Names | ClassMap = None,
                    unit: str = "pixel", pool: np.ndarray | None = None,
                    pool_name: str = "blocks") -> tuple[np.ndarray, list[str]]:
    """Indices of round(fraction * n_c) labelled items per class (at least 1 of each class present), and notes."""
    cmap = names if isinstance(names, ClassMap) else ClassMap.build(unique_ints(values), names)
    chosen, notes = [], []
    for c, idx in _groups(np.asarray(values), pool).items():
        n_c = idx.size
        n = min(max(1, int(round(fraction * n_c))), n_c)
        if n_c == 0:
            notes.append(f"{cmap.label(c)}: no labelled {unit}s in training {pool_name}, took none")
        elif n == n_c and pool is None:
            notes.append(f"{cmap.label(c)}: {_plural(n_c, 'labelled ' + unit)}, took all; none left for testing")
        elif n > fraction * n_c + 0.5:
            notes.append(f"{cmap.label(c)}: {_plural(n_c, 'labelled ' + unit)}, took 1 (at least one per class)")
        chosen.append(_take(idx, n, seed, c))
    return (np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)), notes


def stratified_subset(idx: np.ndarray, values: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified subset of ``idx``: round(fraction * n_c) per class, at least 1."""
    keep = [_take(g, min(max(1, int(round(fraction * g.size))), g.size), seed + 7919, c)
            for c, g in _groups(values[idx], None).items()]
    return np.sort(idx[np.concatenate(keep)]) if keep else idx
