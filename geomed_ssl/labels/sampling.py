"""Few-label sampling: the exact training / test pixels (voxels, images) drawn from label arrays (per class, seeded:
:mod:`geomed_ssl.labels.draws`) and saved to ``labels_used.npz``; k images per class of a class-folder dataset
(scanned by :func:`geomed_ssl.data.labelled.scan_class_folders`).

Rare classes keep half of their labels for testing: ``per_class=k`` takes ``min(k, n_c // 2)`` of a class with
``n_c`` labels and says so in the notes. ``split="blocks"`` trains only on pixels of training blocks and tests only
on the others, ``split="images"`` holds out whole images (:mod:`geomed_ssl.windows.splits`).

Images that share one label file (one scene at several dates) share its positions: a position trained on at one date
is tested at no other date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.labels.draws import (ClassMap, Names, labelled_pixels, sample_fraction, sample_per_class,
                                     stratified_subset, unique_ints)
from geomed_ssl.labels.subjects import grouped
from geomed_ssl.windows.splits import SPLITS, ground_keys, training_maps, training_pool
from geomed_ssl.outfiles import atomic_path

# Where a label array's positions come from in its file: per-axis indices into the file's grid, and its shape
Sources = tuple[tuple[np.ndarray, ...], tuple[int, ...]]


__all__ = ["LabelSelection", "check_labels_config", "sample_images_per_class", "select_labels", "training_area_maps"]


# -- the selection ----------------------------------------------------------------------------------------------
BUDGET_NOTE = "budget_note"  # marks a log record saying a class got fewer labels than the budget asks (compare
# says those of all its fine-tunes once itself)


@dataclass
class LabelSelection:
    """The exact training and test positions: (file index, flat index into that file's label array, class value)."""

    train_file: np.ndarray  # (Ntr,) int32
    train_index: np.ndarray  # (Ntr,) int64
    train_value: np.ndarray  # (Ntr,) int64
    test_file: np.ndarray  # (Nte,) int32
    test_index: np.ndarray  # (Nte,) int64
    test_value: np.ndarray  # (Nte,) int64
    classes: list[int]
    class_names: list[str]
    shapes: list[tuple[int, ...]]
    notes: list[str] = field(default_factory=list)
    split: str = "random"
    seed: int = 0
    paths: list[str] = field(default_factory=list)  # the label files, for the record
    grounds: list[str] | None = None  # per file, what stands for its ground (copies of one map: one path); None: paths
    images: list[str] | None = None  # per file, the image it labels (evaluate finds its trained places by it too)
    encoder_fine_tune: str | None = None  # the FT_DIR whose model's encoder this one fine-tuned (its labels trained it)
    copies: list[str] | None = None  # per file holding training positions, files.listing.content_key of its label
    # file and image files ("" for the others): evaluate finds a renamed copy of the pair by it
    geo: list[list | None] | None = None  # per such file, a georeferenced raster's [crs, *transform] (else None):
    # evaluate finds its training places in a crop of it, or another raster on its grid shifted by whole pixels

    @property
    def class_map(self) -> ClassMap:
        return ClassMap(tuple(self.classes), tuple(self.class_names))

    def target(self, file: int, which: str = "train") -> np.ndarray:
        """Sparse target of one file: class indices 0..K-1 at the chosen positions, -1 elsewhere; its shape."""
        f, idx, val = (getattr(self, f"{which}_{k}") for k in ("file", "index", "value"))
        out = np.full(int(np.prod(self.shapes[file])), -1, np.int64)
        keep = f == file
        out[idx[keep]] = self.class_map.encode(val[keep])
        return out.reshape(self.shapes[file])

    def summary(self, notes: bool = True) -> str:
        """The counts per class, and the budget's ``notes`` (classes that got fewer) unless said apart."""
        counts = np.bincount(self.class_map.encode(self.train_value), minlength=len(self.classes))
        lines = [f"{self.train_value.size} training and {self.test_value.size} test positions over "
                 f"{len(self.classes)} classes ({self.split} split, seed {self.seed})",
                 "  train per class: " + ", ".join(f"{v}:{n}" for v, n in zip(self.classes, counts))]
        keys = ground_keys(self.train_file, self.train_index, self.grounds or self.paths, len(self.shapes))
        _, first = np.unique(keys, return_index=True)
        if first.size < keys.size:  # images sharing a label file: the budget counts places of the ground
            places = np.bincount(self.class_map.encode(self.train_value[first]), minlength=len(self.classes))
            lines.append("  places of the ground per class (each trained at every image of its label file): "
                         + ", ".join(f"{v}:{n}" for v, n in zip(self.classes, places)))
        return "\n".join(lines + ([f"  note: {n}" for n in self.notes] if notes else []))

    def untrained(self) -> list[str]:
        """The classes (labelled as the notes label them) with no training position: scored, never trained."""
        counts = np.bincount(self.class_map.encode(self.train_value), minlength=len(self.classes))
        return [self.class_map.label(c) for c, n in zip(self.classes, counts) if n == 0]

    def grid_text(self) -> str:
        """What ``*_index`` counts, in words, for the file's readers (``meta["grid"]``)."""
        if self.shapes and len(self.shapes[0]) == 3:
            return ("C-order position in the label volume as read: reoriented to RAS (nibabel.as_closest_canonical) "
                    "and, with data.spacing, resampled to it (shapes), not the file's own voxel order")
        return "C-order position (row * width + column) on the label raster's grid (shapes: height, width)"

    def save_npz(self, path: str | Path) -> None:
        """Write ``labels_used.npz`` (arrays + a JSON 'meta' string; loads without pickle)."""
        meta = {"version": 1, "classes": self.classes, "class_names": self.class_names, "notes": self.notes,
                "shapes": [list(s) for s in self.shapes], "split": self.split, "seed": self.seed, "paths": self.paths,
                **({"grounds": self.grounds} if self.grounds is not None else {}),
                **({"images": self.images} if self.images is not None else {}), "grid": self.grid_text(),
                **({"encoder_fine_tune": self.encoder_fine_tune} if self.encoder_fine_tune else {}),
                **({"copies": self.copies} if self.copies is not None else {}),
                **({"geo": self.geo} if self.geo is not None else {})}
        arrays = {k: getattr(self, k) for k in ("train_file", "train_index", "train_value", "test_file",
                                                "test_index", "test_value")}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load_npz(cls, path: str | Path) -> LabelSelection:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"cannot read label selection '{path}' ({err}); expected a labels_used.npz.") from None
        return cls(**arrays, classes=[int(c) for c in meta["classes"]], class_names=list(meta["class_names"]),
                   shapes=[tuple(s) for s in meta["shapes"]], notes=list(meta["notes"]), split=meta["split"],
                   seed=int(meta["seed"]), paths=list(meta.get("paths", [])),
                   grounds=list(meta["grounds"]) if meta.get("grounds") is not None else None,
                   images=list(meta["images"]) if meta.get("images") is not None else None,
                   encoder_fine_tune=meta.get("encoder_fine_tune"),
                   copies=list(meta["copies"]) if meta.get("copies") is not None else None,
                   geo=list(meta["geo"]) if meta.get("geo") is not None else None)


def check_labels_config(cfg: Any) -> None:
    """ConfigError for values of the ``labels`` section that cannot work."""
    if cfg.per_class is not None and cfg.fraction is not None:
        raise ConfigError("set labels.per_class or labels.fraction, not both.")
    if cfg.per_class is not None and int(cfg.per_class) < 1:
        raise ConfigError(f"labels.per_class must be >= 1, got {cfg.per_class}.")
    if cfg.fraction is not None and not 0 < cfg.fraction <= 1:
        raise ConfigError(f"labels.fraction must be in (0, 1], got {cfg.fraction}.")
    if cfg.split not in SPLITS:
        raise ConfigError(f"labels.split must be {', '.join(SPLITS[:-1])} or {SPLITS[-1]}, got '{cfg.split}'.")
    if int(cfg.block_size) < 1:
        raise ConfigError(f"labels.block_size must be >= 1, got {cfg.block_size}.")
    if cfg.test_fraction is not None and not 0 < cfg.test_fraction <= 1:
        raise ConfigError(f"labels.test_fraction must be in (0, 1], got {cfg.test_fraction}.")


def training_area_maps(labels_list: Sequence[np.ndarray], masks: Sequence[np.ndarray], cfg: Any,
                       paths: Sequence[str] = ()) -> list[np.ndarray] | None:
    """Per label array, a bool map of its shape: True where ``select_labels`` with the same ``labels`` config and
    ``paths`` (its ``grounds`` when it was given them) may train (its training blocks or images), False where it
    only tests; None for the random split."""
    if cfg.split == "random":
        return None
    shapes = [tuple(int(s) for s in a.shape) for a in labels_list]
    files, flats, values = labelled_pixels(labels_list, masks)
    return training_maps(cfg.split, shapes, int(cfg.block_size), int(cfg.seed), files, flats, values, paths)


def source_places(files: np.ndarray, flats: np.ndarray, shapes: Sequence[tuple[int, ...]],
                  sources: Sequence[Sources | None] | None) -> np.ndarray:
    """(N,) each position's flat index in its label file's own grid (``sources``: :func:`label_sources`; without
    them, the position itself), so the copies a resampling made of one voxel share it."""
    if not sources or all(src is None for src in sources):
        return flats
    out = flats.copy()
    bounds = np.searchsorted(files, np.arange(len(sources) + 1))  # files ascend (labelled_pixels)
    for f, src in enumerate(sources):
        if src is None:
            continue
        rows = np.arange(bounds[f], bounds[f + 1])
        axes, shape = src
        coords = np.unravel_index(flats[rows], shapes[f])
        out[rows] = np.ravel_multi_index(tuple(a[c] for a, c in zip(axes, coords)), shape)
    return out


def select_labels(labels_list: Sequence[np.ndarray], masks: Sequence[np.ndarray], cfg: Any,
                  names: Names | Sequence[str] = None, paths: Sequence[str] = (),
                  sources: Sequence[Sources | None] | None = None,
                  grounds: Sequence[str] | None = None) -> LabelSelection:
    """Draw the training positions from label arrays as the ``labels`` config says; the test set is the rest
    (random split) or the labelled positions of the test blocks / images (``blocks`` / ``images`` split:
    :mod:`geomed_ssl.windows.splits`), subsampled by ``test_fraction``.

    Without per_class and fraction every labelled position of the training pool trains. Images with the same label
    file in ``paths`` are one ground at several dates: they share blocks (and ``images`` keeps them together), and a
    position that trains at one date is tested at none; ``grounds`` (:func:`geomed_ssl.labels.label_grounds`:
    copies of one label map beside each date stand for one file) group the images in the place of ``paths``, which
    the selection keeps as the record of each image's own label file. Likewise the copies of one label voxel that
    ``sources`` (:func:`label_sources`) names on a resampled grid: a budget counts them once, and they train or test
    together.
    """
    check_labels_config(cfg)
    shapes = [tuple(int(s) for s in a.shape) for a in labels_list]
    unit = "voxel" if shapes and len(shapes[0]) == 3 else "pixel"
    files, flats, values = labelled_pixels(labels_list, masks)
    if values.size == 0:
        raise DataError(f"no labelled {unit}s in {len(shapes)} label file(s) (ignore value {cfg.ignore_value}); "
                        "check labels.ignore_value and the label files' nodata (labels.use_nodata=false: a nodata "
                        "tag marks nothing).")
    cmap = ClassMap.build(unique_ints(values), names if names is not None else getattr(cfg, "class_names", None))
    if len(cmap.values) < 2:
        zero = (" 0 is left out as unlabelled: if it is a class here, as in a binary mask (0 and 1, or 0 and 255), "
                "set labels.ignore_value=null." if cfg.ignore_value == 0 else "")
        raise DataError(f"the labels hold one class only ({cmap.label(cmap.values[0])}, {values.size} labelled "
                        f"{unit}s in {len(shapes)} label file(s)); segmentation needs at least two: label another "
                        f"class too (e.g. the background), or check labels.ignore_value ({cfg.ignore_value}) and "
                        f"the label files' nodata tags (labels.use_nodata=false: a tag marks nothing).{zero}")
    seed, notes = int(cfg.seed), []
    group = list(grounds) if grounds is not None else paths
    maps = training_maps(cfg.split, shapes, int(cfg.block_size), seed, files, flats, values, group)
    pool = training_pool(maps, files, flats)  # (N,) may train; None: the random split
    places = source_places(files, flats, shapes, sources)
    keys = ground_keys(files, places, group, len(shapes))  # one per place of the ground, shared by its dates and by
    # the copies of one voxel
    copies = values.size if places is flats else np.unique(ground_keys(files, places, [], len(shapes))).size
    distinct = bool((keys[1:] > keys[:-1]).all())  # one position per place (no dates, no copies): keys ascend
    if cfg.per_class is not None or cfg.fraction is not None:
        # a budget counts places of the ground: a place drawn trains at every image (date) of its label file
        first = (np.arange(keys.size) if distinct else  # each place's first position, in position order
                 np.sort(np.unique(keys, return_index=True)[1]))
        sub = lambda x: x[first] if x is not None and first.size < x.size else x  # noqa: E731
        unit = "place" if first.size < values.size else unit  # notes count places of the ground then
        if cfg.per_class is not None:
            drawn, notes = sample_per_class(sub(values), int(cfg.per_class), seed, cmap, unit, sub(pool), cfg.split)
        else:
            drawn, notes = sample_fraction(sub(values), float(cfg.fraction), seed, cmap, unit, sub(pool), cfg.split)
        train = drawn if first.size == values.size else np.flatnonzero(np.isin(keys, keys[first[drawn]]))
    else:
        train = np.flatnonzero(pool) if pool is not None else np.arange(values.size)
    check_drew_some(train, unit, cfg.per_class, cfg.fraction, notes)
    if pool is None:
        if distinct:
            untrained = np.ones(keys.size, bool)
            untrained[train] = False
            test = np.flatnonzero(untrained)
        else:
            test = np.flatnonzero(~np.isin(keys, keys[train]))  # a place that trains at one date tests at none
    else:
        test = np.flatnonzero(~pool)
        if copies < values.size:  # a voxel's copies may straddle a block edge: none trains outside its blocks,
            train = train[pool[train]]  # and none of a trained voxel's copies is tested
            test = test[~np.isin(keys[test], keys[train])]
    if cfg.test_fraction is not None and test.size:
        test = stratified_subset(test, values, float(cfg.test_fraction), seed)
    tested = set(unique_ints(values[test]).tolist())
    if copies < values.size:
        first_of = np.unique(keys[train], return_index=True)[1]  # one training position per label-file voxel
        per = np.bincount(cmap.encode(values[train][first_of]), minlength=len(cmap.values))
        notes.append(f"the labels were resampled onto data.spacing: {values.size} labelled voxels are copies of "
                     f"{copies} voxels of the label files; budgets count those voxels, and the copies of one train "
                     "or test together (label-file voxels training per class: "
                     + ", ".join(f"{cmap.label(v)}:{n}" for v, n in zip(cmap.values, per)) + ")")
    if not test.size and cfg.per_class is None and cfg.fraction is None:
        notes.append(f"every labelled {unit} trains (no budget given), so none is left to test: pass "
                     "--labels-per-class or --label-fraction to keep the rest for testing, or score the model on other "
                     "labelled images with geomed-ssl evaluate")
    else:
        notes += [f"{cmap.label(c)}: no test {unit}s left; it is not evaluated" for c in cmap.values if c not in tested]
    return LabelSelection(files[train], flats[train], values[train], files[test], flats[test], values[test],
                          list(cmap.values), list(cmap.names), shapes, notes, cfg.split, seed, [str(p) for p in paths],
                          [str(g) for g in grounds] if grounds is not None else None)


# -- classification datasets ------------------------------------------------------------------------------------
def sample_images_per_class(labels: np.ndarray, k: int, seed: int, names: Sequence[str] | None = None,
                            unit: str = "image") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train indices, test indices, notes): k images per class (at most half of a class), the rest test."""
    labels = np.asarray(labels, np.int64)
    train, notes = sample_per_class(labels, k, seed, ClassMap.of_folders(names), unit=unit)
    rest = np.ones(labels.size, bool)
    rest[train] = False
    return train, np.flatnonzero(rest), notes


def split_images(labels: np.ndarray, per_class: int | None, fraction: float | None, seed: int,
                 names: Sequence[str], test_fraction: float | None = None, units: np.ndarray | None = None,
                 unit: str = "image") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train indices, test indices, notes) of a class-folder dataset: ``per_class`` images per class (at most half
    of a class) or ``fraction`` of each class (at least one), the rest test, subsampled by ``test_fraction``.
    ``units`` (per image, from :func:`~geomed_ssl.labels.subjects.subject_units`): images sharing a unit train or
    test together, and the budget counts units (subjects)."""
    labels = np.asarray(labels, np.int64)
    if grouped(units):
        _, first, inverse = np.unique(units, return_index=True, return_inverse=True)
        train, test, notes = split_images(labels[first], per_class, fraction, seed, names, test_fraction,
                                          unit="subject")
        return np.flatnonzero(np.isin(inverse, train)), np.flatnonzero(np.isin(inverse, test)), notes
    if per_class is not None:
        train, test, notes = sample_images_per_class(labels, int(per_class), seed, names, unit)
    elif fraction is not None:
        train, notes = sample_fraction(labels, float(fraction), seed, ClassMap.of_folders(names), unit=unit)
        test = np.setdiff1d(np.arange(labels.size), train)
    else:
        raise ConfigError("classification needs labels.per_class (--labels-per-class K) or labels.fraction.")
    check_drew_some(train, unit, per_class, fraction, notes)
    if test_fraction is not None and test.size:
        test = stratified_subset(test, labels, float(test_fraction), seed)
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64), notes


def check_drew_some(train: np.ndarray, unit: str, per_class: int | None, fraction: float | None,
                    notes: Sequence[str]) -> None:
    """A DataError when a budget drew nothing to train on (every class too small for it), with each class's note;
    fitting on nothing failed with a traceback, or scored a constant map as a model."""
    if train.size:
        return
    budget = (f"{per_class} per class" if per_class is not None else
              f"fraction {fraction}" if fraction is not None else "the split")
    raise DataError(f"no labelled {unit} is left to train on with {budget}: " + "; ".join(notes)
                    + f". Label more {unit}s per class, e.g. a mask of each structure rather than a few landmark "
                    "points.")
