"""Labelled data shared by training and its applications: folder-per-class datasets (EuroSAT style) scanned into
records and class indices, whole images read normalised with their class (``ImageDataset``: fine-tuned
classifiers, their predictions, the k-NN monitor of pretraining), the random flips / rotations both fine-tuning
datasets draw, and ``IGNORE``, the target of pixels without a label.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from geomed_ssl.data.catalog import FileRecord, reported_already, scan
from geomed_ssl.windows.crops import crop_to_patch, pad_to_patch
from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.errors import DataError
from geomed_ssl.outdirs import MANIFEST

log = logging.getLogger("geomed_ssl")
IGNORE = -1  # the target of an unlabelled pixel / voxel (cross_entropy's ignore_index in fine-tuning)


def scan_class_folders(root: str | Path, data_cfg: Any, strict: bool = False, for_model: bool = False,
                       ) -> tuple[list[FileRecord], np.ndarray, list[str]]:
    """A folder per class (EuroSAT style) of GeoTIFFs or NIfTIs: (records, class index per record (int64), class
    names = sorted folder names). One scan of ``root``, so every class shares the band set; problem files are
    skipped with a warning, and band names assigned by position warned about (both errors with ``strict``).
    ``for_model`` (scoring a trained model): each image keeps its own bands (read by name later) and one class
    folder is enough."""
    if not Path(root).is_dir():
        what = "does not exist" if not Path(root).exists() else "is a file"
        raise DataError(f"'{root}' {what}: classification data is a folder with one subfolder of images per class "
                        "(EuroSAT style), named after its class.")
    catalog = scan(root, data_cfg, strict=strict, names_by_position="error" if strict else "warn",
                   majority=not for_model)
    catalog.warn_problems()  # first: a class whose files were all skipped is named in them
    base = Path(catalog.root or root)
    alone = Counter(os.path.dirname(r.path) for r in catalog.records)  # a folder holding one sample is the sample's
    folder_of = {r.path: sample_parts(r, base, bool(getattr(data_cfg, "channels", None))
                                      and alone[os.path.dirname(r.path)] == 1) for r in catalog.records}
    loose = [p for p, parts in folder_of.items() if len(parts) < 2]
    if loose:
        shown = ", ".join(map(os.path.basename, loose[:3]))
        raise DataError(f"{len(loose)} images lie directly in '{base}' ({shown}); "
                        "a classification dataset has one subfolder per class holding its images.")
    names = sorted({parts[0] for parts in folder_of.values()})
    nfc = [unicodedata.normalize("NFC", n) for n in names]
    if len(set(nfc)) < len(nfc):  # Forêt typed on Linux and Forêt copied from macOS: two classes that print alike
        raise DataError(f"class folders {[n for n, c in zip(names, nfc) if nfc.count(c) > 1]} under '{base}' are "
                        "one name in two Unicode forms (accents composed or not: Linux and macOS): merge them.")
    check_nesting(base, names, folder_of, strict)
    if len(names) < (1 if for_model else 2):
        raise DataError(f"'{base}' has images in {len(names)} class folder(s) ({', '.join(names)}); "
                        "classification needs at least two class folders.")
    empty = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name not in names and not (d / MANIFEST).is_file())
    if empty and not reported_already():
        log.warning(f"warning: {len(empty)} class folder(s) under '{base}' hold no usable image, so they are no "
                    f"class: {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}.")
    records = sorted(catalog.records, key=lambda r: (folder_of[r.path][0], r.path))
    labels = np.array([names.index(folder_of[r.path][0]) for r in records], np.int64)
    if not reported_already():  # (single files: a stack's channels may share a file, a DEM say)
        singles = [(r.path, names[i]) for r, i in zip(records, labels) if len(r.paths or []) <= 1]
        warn_copies([p for p, _ in singles], [c for _, c in singles])
    return records, labels, names


def sample_parts(record: FileRecord, base: Path, own_folder: bool) -> tuple[str, ...]:
    """The folders and name of ``record``'s image under ``base``: its path's parts, but a data.channels stack in a
    folder of its own (``own_folder``: ``Forest/t01/B04.tif``, one file or several) as if its files lay in the
    class folder, since that folder is the sample, not a subfolder of the class (a folder of several cases,
    ``Forest/imagesTr/``, is a subfolder)."""
    parts = Path(os.path.relpath(record.path, base)).parts
    return parts[:-2] + parts[-1:] if own_folder and len(parts) > 2 else parts


SPLIT_NAMES = {f"{n}{end}" for n in ("train", "training", "val", "valid", "validation", "dev", "test", "testing",
                                      "eval", "evaluation", "holdout") for end in ("", "_set", "-set", "set")}


def check_nesting(base: Path, names: Sequence[str], folder_of: dict[str, tuple[str, ...]], strict: bool) -> None:
    """Images in subfolders of a class folder count for that class, said once; a folder of split folders
    (``train/``, ``test/``, each holding class folders) is refused: it would train a "train vs test" classifier.
    Class folders that share two or more subfolder names (``siteA/Forest``, ``siteA/River``, ``siteB/Forest``, ...)
    are warned about (an error with ``strict``): the subfolders may be the classes."""
    subs: dict[str, set[str]] = {}
    for parts in folder_of.values():
        if len(parts) > 2:
            subs.setdefault(parts[0], set()).add(parts[1])
    if not subs:
        return
    inner = sorted(set().union(*subs.values()))
    if all(n.lower() in SPLIT_NAMES for n in names):
        raise DataError(f"'{base}' holds split folders ({', '.join(names)}) of class folders ({', '.join(inner[:5])}"
                        f"{', ...' if len(inner) > 5 else ''}), not class folders: point --data at one split (e.g. "
                        f"'{base / names[-1]}') and evaluate on another.")
    shared = sorted(n for n in inner if sum(n in v for v in subs.values()) >= 2)
    if len(shared) >= 2:  # one name alike (Forest/images, River/images) is a layout, not classes
        msg = (f"the class folders of '{base}' hold subfolders of the same names ({', '.join(shared[:5])}"
               f"{', ...' if len(shared) > 5 else ''}): the classes are the top folders ({', '.join(names[:5])}"
               f"{', ...' if len(names) > 5 else ''}), each with all its subfolders' images; if the subfolders are the "
               "classes, point --data at a folder that holds them")
        if strict:
            raise DataError(msg + ".")
        log.warning("warning: " + msg + ".")
    elif not reported_already():
        first = sorted(subs)[0]
        log.info("note: images in subfolders count for their class folder (e.g. '%s/%s')", first,
                 sorted(subs[first])[0])


def warn_copies(paths: Sequence[str], classes: Sequence[str], max_bytes: int = 1 << 26) -> None:
    """One warning naming images that are byte-identical copies of another (files of one size, up to ``max_bytes``,
    hashed): a copy in another class contradicts its label, and one on the other side of a split inflates the test
    score."""
    import hashlib

    by_size: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        try:
            size = os.path.getsize(p) if os.path.isfile(p) else max_bytes + 1  # a stack's folder: not compared
        except OSError:
            continue
        if size <= max_bytes:
            by_size.setdefault(size, []).append(i)
    seen: dict[str, int] = {}
    copies: list[tuple[int, int]] = []
    for group in (g for g in by_size.values() if len(g) > 1):
        for i in group:
            with open(paths[i], "rb") as fh:
                digest = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
            if digest in seen:
                copies.append((seen[digest], i))
            else:
                seen[digest] = i
    if copies:
        a, b = copies[0]
        across = sum(classes[i] != classes[j] for i, j in copies)
        log.warning("warning: %d image(s) are copies of another (e.g. '%s' of '%s')%s: a copy in another class "
                    "contradicts its label, and copies split between training and test inflate the test score; keep "
                    "one of each.",
                    len(copies), paths[b], paths[a],
                    f", {across} of them in another class folder" if across else "")


def augment(image: np.ndarray, valid: np.ndarray, target: np.ndarray, rng: np.random.Generator,
            flip: bool = True, rot90: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random flips on every spatial axis (``flip``: the recipe's ``augment.flip``) and (2D, square windows,
    ``rot90``) a random multiple of 90° rotation."""
    nd = target.ndim
    for axis in range(nd if flip else 0):
        if rng.random() < 0.5:
            image, valid, target = (np.flip(image, axis + 1), np.flip(valid, axis), np.flip(target, axis))
    if rot90 and nd == 2 and target.shape[0] == target.shape[1]:
        k = int(rng.integers(4))
        image, valid, target = np.rot90(image, k, (1, 2)), np.rot90(valid, k), np.rot90(target, k)
    return np.ascontiguousarray(image), np.ascontiguousarray(valid), np.ascontiguousarray(target)


def geometry(aug_cfg: Any) -> dict[str, bool]:
    """:func:`augment`'s ``flip`` and ``rot90`` from a recipe's ``augment`` section (None: both on)."""
    return {"flip": bool(getattr(aug_cfg, "flip", True)), "rot90": bool(getattr(aug_cfg, "rot90", True))}


SIDED = 0.9  # a class is on one side of the left-right axis when this share of its labelled voxels lies there
SIDED_MIN = 20  # ... judged on at least this many labelled voxels


def sided_classes(arrays: list[np.ndarray], masks: list[np.ndarray], classes: list[int]) -> tuple[list[int], list[int]]:
    """Class values whose labelled voxels lie almost all (``SIDED``) left, and those almost all right, of each
    volume's middle along the RAS i axis (left to right: the reader's first axis), counted slice by slice (a whole
    volume's voxel indices would cost gigabytes)."""
    values_of = np.asarray([int(c) for c in classes])
    right, total = np.zeros(len(classes)), np.zeros(len(classes))
    for values, labelled in zip(arrays, masks):
        if values.ndim != 3 or not labelled.any() or len(values_of) == 0:
            continue
        middle = (values.shape[0] - 1) / 2
        for i in range(values.shape[0]):
            if i == middle:
                continue
            found = values[i][labelled[i]].astype(np.int64)
            found = found[(found >= 0) & (found <= values_of.max())]
            counts = np.bincount(found, minlength=int(values_of.max()) + 1)[values_of] if found.size else 0
            total += counts
            if i > middle:
                right += counts
    share = right / np.maximum(total, 1)
    seen = total >= SIDED_MIN
    return ([int(c) for c in values_of[seen & (share <= 1 - SIDED)]],
            [int(c) for c in values_of[seen & (share >= SIDED)]])


def warn_sided_flips(recipe: Any, arrays: list[np.ndarray], masks: list[np.ndarray], classes: list[int]) -> None:
    """Volumes fine-tuned with ``augment.flip``: a warning when some classes lie on the left and others on the
    right (FreeSurfer's Left- / Right- structures): a left-right flip swaps their sides, so the model cannot learn
    which is which."""
    if recipe.data.kind != "volume" or not recipe.augment.flip or recipe.finetune.head == "probe":
        return  # (a probe head is fitted on unflipped features)
    left, right = sided_classes(arrays, masks, classes)
    if left and right:
        log.warning(f"warning: the labels of classes {left[:3]} lie on the left and of classes {right[:3]} on the "
                    "right (RAS), and the training windows are flipped along every axis (augment.flip), which "
                    "swaps the sides; pass --set augment.flip=false if a class is defined by its side.")


class ImageDataset(Dataset):
    """Whole images (normalised, centre-cropped to the token patch) with their class index; with ``size``, cut to
    that size (at random with ``augment``, else centred), so images of several sizes can share a batch."""

    def __init__(self, records: Sequence[Any], labels: np.ndarray, stats: BandStats, data_cfg: Any,
                 patch: Sequence[int], augment: bool = False, seed: int = 0, size: Sequence[int] | None = None,
                 aug_cfg: Any = None):
        self.records, self.labels, self.stats, self.data_cfg = list(records), labels, stats, data_cfg
        self.aug_cfg = aug_cfg  # the recipe's augment section: its flip and rot90 (None: both)
        self.patch, self.augment, self.seed = tuple(patch), augment, seed
        self.size = tuple(size) if size is not None else None
        self.raster = RasterReader() if len(self.patch) == 2 else None
        self.volume = VolumeReader(data_cfg) if len(self.patch) == 3 else None

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.records[i]
        if self.raster is not None:
            raw = self.raster.read_window(r, 0, 0, *r.shape)
        else:
            raw, _ = self.volume.load(r)
        nodata = self.data_cfg.nodata if self.data_cfg.nodata is not None else r.nodata
        return pad_to_patch(*normalize(crop_to_patch(raw, self.patch), self.stats, nodata), self.patch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, valid = self.image(i % len(self.records))
        rng = np.random.default_rng([self.seed, 777, int(i)])
        if self.size is not None and image.shape[1:] != self.size:
            image, valid = pad_to_patch(image, valid, self.size)  # one far smaller than the others (common_size)
            box = tuple(slice(a, a + w) for a, w in zip(
                [int(rng.integers(0, s - w + 1)) if self.augment else (s - w) // 2
                 for s, w in zip(image.shape[1:], self.size)], self.size))
            image, valid = image[(slice(None), *box)], valid[box]
        if self.augment:
            image, valid, _ = augment(image, valid, np.zeros(valid.shape, np.int16), rng, **geometry(self.aug_cfg))
        return {"image": torch.from_numpy(image), "target": torch.tensor(int(self.labels[i % len(self.records)]))}
