"""Few-label supervision: label files matched to their images (grid-checked), read as integer class maps, and the
exact training / test pixels (voxels, images) drawn from them, seeded, and saved to ``labels_used.npz``.

Rare classes keep half of their labels for testing: ``per_class=k`` takes ``min(k, n_c // 2)`` of a class with
``n_c`` labels and says so in the notes. ``split="blocks"`` tiles each image into blocks and trains only on pixels
of training blocks, tests only on the others: a random pixel split of one scene puts test pixels right next to
training pixels and overstates accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from geomed_ssl.data.catalog import EXTENSIONS, FileRecord, scan
from geomed_ssl.errors import ConfigError, DataError

LABEL_SUFFIXES = ("gt", "label", "labels", "mask", "seg", "segmentation", "annotation", "annotations", "truth")
AFFINE_TOL = 1e-4
Names = Mapping[int, str] | None


# -- matching label files to images ---------------------------------------------------------------------------
def _stem(path: str | Path) -> str:
    name = os.path.basename(str(path))
    for ext in (".nii.gz", ".nii", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _label_keys(stem: str) -> list[str]:
    """Image stems a label file name can belong to: its own stem, and its stem without a known label suffix."""
    low, keys = stem.lower(), [stem.lower()]
    for sep in "_-.":
        head, found, tail = low.rpartition(sep)
        if found and head and tail in LABEL_SUFFIXES:
            keys.append(head)
    return keys


def _shared_parents(a: str, b: str) -> int:
    """How many trailing folder names the two paths share (labels/tile_3/x.tif ~ images/tile_3/x.tif -> 1)."""
    n = 0
    for x, y in zip(reversed(Path(a).parent.parts), reversed(Path(b).parent.parts)):
        if x != y:
            break
        n += 1
    return n


def _by_name(records: list[FileRecord], label_dir: Path, kind: str) -> dict[str, str | None]:
    images = {os.path.abspath(p) for r in records for p in r.paths}
    index: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(label_dir):
        dirs.sort()
        for f in sorted(files):
            path = os.path.abspath(os.path.join(folder, f))
            if f.lower().endswith(EXTENSIONS[kind]) and path not in images:
                for key in _label_keys(_stem(f)):
                    index.setdefault(key, []).append(path)
    out: dict[str, str | None] = {}
    for r in records:
        found = index.get(_stem(r.path).lower(), [])
        if len(found) > 1:
            score = [_shared_parents(r.path, f) for f in found]
            found = [f for f, s in zip(found, score) if s == max(score)]
        if len(found) > 1:
            raise DataError(f"image '{r.path}' matches {len(found)} label files ({', '.join(found[:4])}); "
                            "keep one, or list image,label pairs in a labels CSV.")
        out[r.path] = found[0] if found else None
    return out


def _by_csv(records: list[FileRecord], csv_path: Path, label_dir: Path | None) -> dict[str, str | None]:
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise DataError(f"cannot read labels CSV '{csv_path}' ({err.strerror}).") from None
    cols = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    if "image" not in cols or "label" not in cols:
        raise DataError(f"labels CSV '{csv_path}' needs a header with columns image,label; found {list(cols)}.")
    base = csv_path.parent
    label_base = label_dir if label_dir is not None and label_dir.is_dir() else base
    by_path = {os.path.abspath(p): r.path for r in records for p in r.paths}
    by_name: dict[str, list[str]] = {}
    for r in records:
        by_name.setdefault(os.path.basename(r.path).lower(), []).append(r.path)
    out: dict[str, str | None] = {r.path: None for r in records}
    for i, row in enumerate(rows, start=2):
        image, label = (row[cols["image"]] or "").strip(), (row[cols["label"]] or "").strip()
        if not image or not label:
            raise DataError(f"labels CSV '{csv_path}' line {i}: empty image or label entry.")
        key = by_path.get(os.path.abspath(base / image))
        if key is None and os.path.basename(image) == image and len(by_name.get(image.lower(), [])) == 1:
            key = by_name[image.lower()][0]
        if key is None:
            continue  # a row for an image outside this catalog
        path = Path(label) if os.path.isabs(label) else label_base / label
        if not path.is_file():
            raise DataError(f"labels CSV '{csv_path}' line {i}: label file '{path}' does not exist.")
        out[key] = str(path)
    return out


def _crs_text(wkt: str | None) -> str:
    if not wkt:
        return "none"
    try:
        from rasterio.crs import CRS

        return CRS.from_wkt(wkt).to_string()
    except Exception:
        return wkt[:40] + "..."


def _same_crs(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return not a and not b
    from rasterio.crs import CRS

    return a == b or CRS.from_wkt(a) == CRS.from_wkt(b)


def _raster_header(path: str) -> tuple[tuple[int, int], str | None, list[float], int]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                crs = src.crs.to_wkt() if src.crs else None
                return (src.height, src.width), crs, [float(v) for v in list(src.transform)[:6]], src.count
        except rasterio.errors.RasterioIOError as err:
            raise DataError(f"cannot open label raster '{path}' ({err}); is it a GeoTIFF?") from None


def _raster_diffs(record: FileRecord, label: str) -> list[str]:
    from affine import Affine

    shape, crs, tr, _ = _raster_header(label)
    diffs = []
    if tuple(shape) != tuple(record.shape):
        diffs.append(f"size {shape[1]}x{shape[0]} vs {record.shape[1]}x{record.shape[0]} (width x height)")
    if not _same_crs(crs, record.crs):
        diffs.append(f"CRS {_crs_text(crs)} vs {_crs_text(record.crs)}")
    img = list(record.transform or Affine.identity()[:6])
    pix = max(abs(img[0]), abs(img[4]), 1e-12)
    lin, img_lin = [tr[i] for i in (0, 1, 3, 4)], [img[i] for i in (0, 1, 3, 4)]
    if not np.allclose(lin, img_lin, rtol=0, atol=1e-6 * pix):
        diffs.append(f"pixel size {tr[0]:g} x {tr[4]:g} vs {img[0]:g} x {img[4]:g}")
    else:
        col, row = ~Affine(*img) @ (tr[2], tr[5])
        if abs(col) > 1e-3 or abs(row) > 1e-3:
            diffs.append(f"origin shifted by {col:+.3g} columns, {row:+.3g} rows "
                         f"(({tr[2]:.10g}, {tr[5]:.10g}) vs ({img[2]:.10g}, {img[5]:.10g}))")
    return diffs


def _canonical(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) after nibabel's closest-canonical (RAS) reorientation, from the header alone."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    out = [0, 0, 0]
    for src, (dst, _) in enumerate(ornt):
        out[int(dst)] = int(shape[src])
    return tuple(out), affine @ inv_ornt_aff(ornt, tuple(shape[:3]))


def _volume_diffs(record: FileRecord, label: str) -> list[str]:
    import nibabel as nib

    try:
        img = nib.load(label)
    except Exception as err:
        raise DataError(f"cannot open label volume '{label}' ({err}); is it a NIfTI file?") from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        return [f"label shape {list(shape)} is not 3D"]
    l_shape, l_aff = _canonical(shape, np.asarray(img.affine, np.float64))
    i_shape, i_aff = _canonical(record.shape[:3], np.asarray(record.affine if record.affine is not None
                                                              else np.eye(4), np.float64))
    diffs = []
    if l_shape != i_shape:
        diffs.append(f"shape {'x'.join(map(str, l_shape))} vs {'x'.join(map(str, i_shape))} (RAS order)")
    if not np.allclose(l_aff, i_aff, rtol=0, atol=AFFINE_TOL):
        offset = np.round(np.linalg.solve(i_aff, l_aff[:, 3])[:3], 3).tolist()  # label origin in image voxels
        sizes = [np.round(np.linalg.norm(a[:3, :3], axis=0), 4).tolist() for a in (l_aff, i_aff)]
        diffs.append(f"affine differs by up to {np.abs(l_aff - i_aff).max():.4g} (label origin at image voxel "
                     f"{offset}; voxel sizes {sizes[0]} vs {sizes[1]})")
    return diffs


def check_grid(record: FileRecord, label_path: str | Path, kind: str) -> None:
    """DataError naming both files and each difference unless the label is on the image's pixel / voxel grid."""
    label = str(label_path)
    diffs = _raster_diffs(record, label) if kind == "raster" else _volume_diffs(record, label)
    if diffs:
        what = "pixel grid (size, CRS, transform)" if kind == "raster" else "voxel grid (shape, affine)"
        raise DataError(f"label '{label}' is not on the {what} of image '{record.path}': {'; '.join(diffs)} "
                        "(label vs image). Resample the label onto the image grid (nearest neighbour) or fix "
                        "which label belongs to which image (labels CSV).")


def match_labels(image_records: Sequence[FileRecord], label_dir: str | Path | None, kind: str,
                 csv: str | Path | None = None, allow_unlabelled: bool = False,
                 label_name: str | None = None) -> list[tuple[FileRecord, str]]:
    """Pair each image with its label file and check they share one grid.

    ``label_dir`` is a folder searched recursively for files named like the image (same stem, or the stem plus
    ``_gt``/``_label``/``_mask``/``_seg``/...), or one label file shared by every image (one scene, many dates).
    ``csv`` (columns image,label; relative paths from the CSV's folder, labels from ``label_dir`` if given) pairs
    them explicitly; ``label_name`` is a fixed file name beside each image (one folder per case, e.g. BraTS).
    Images without a label are a DataError unless ``allow_unlabelled`` (they are then left out).
    """
    records = list(image_records)
    if label_name is not None:
        beside = {r.path: os.path.join(os.path.dirname(r.path), label_name) for r in records}
        found = {k: v if os.path.isfile(v) else None for k, v in beside.items()}
    elif csv is not None:
        found = _by_csv(records, Path(csv), Path(label_dir) if label_dir else None)
    elif label_dir is None:
        raise DataError("no labels given: pass a label folder, a label file or a labels CSV (image,label).")
    elif Path(label_dir).is_file():
        found = {r.path: str(label_dir) for r in records}
    elif Path(label_dir).is_dir():
        found = _by_name(records, Path(label_dir), kind)
    else:
        raise DataError(f"label folder '{label_dir}' does not exist.")
    missing = [r.path for r in records if found[r.path] is None]
    where = f"'{label_name}' beside each image" if label_name else f"'{csv or label_dir}'"
    if missing and not allow_unlabelled:
        common = os.path.commonpath([r.path for r in records]) if len(records) > 1 else os.path.dirname(missing[0])
        names = ", ".join(os.path.relpath(p, common) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        ext = EXTENSIONS[kind][-1]
        raise DataError(f"{len(missing)} of {len(records)} images have no label file ({names}) in {where}. Name "
                        f"labels like the image (x{ext} -> x{ext} or x_gt{ext} / x_mask{ext}), list pairs in a labels "
                        "CSV (image,label), or allow unlabelled images.")
    pairs = [(r, found[r.path]) for r in records if found[r.path] is not None]
    if not pairs:
        raise DataError(f"no image has a label file in {where}.")
    for record, label in pairs:
        check_grid(record, label, kind)
    return pairs  # type: ignore[return-value]


# -- reading ----------------------------------------------------------------------------------------------------
def _to_labels(arr: np.ndarray, nodata: float | None, ignore_value: int | None,
               path: str) -> tuple[np.ndarray, np.ndarray]:
    if arr.dtype.kind == "f":
        labelled = np.isfinite(arr)
        vals = arr[labelled]
        off = np.count_nonzero(np.abs(vals - np.rint(vals)) > 1e-3) / max(vals.size, 1)
        if off > 0.01:
            raise DataError(f"label file '{path}' holds non-integer values ({off:.0%} of its pixels); labels are "
                            "class ids. Is this an image rather than a label map?")
        labels = np.rint(np.where(labelled, arr, 0)).astype(np.int64)
    elif arr.dtype.kind in "iub":
        labelled, labels = np.ones(arr.shape, bool), arr.astype(np.int64)
    else:
        raise DataError(f"label file '{path}' has unsupported data type {arr.dtype}; use integer class ids.")
    if nodata is not None and math.isfinite(nodata):
        labelled &= arr != nodata
    if ignore_value is not None:
        labelled &= labels != ignore_value
    labels[~labelled] = -1 if ignore_value is None else ignore_value
    return labels, labelled


def _resampled_shape(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]) -> list[int]:
    """The volume reader's grid for ``data.spacing``: round(extent / spacing) + 1 voxels per axis."""
    current = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return [max(1, int(round((n - 1) * c / s)) + 1) if n > 1 else 1 for n, c, s in zip(shape, current, spacing)]


def read_label(path: str | Path, kind: str, ignore_value: int | None = 0, nodata: float | None = None,
               spacing: Sequence[float] | None = None,
               window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A label file as (int64 labels, bool labelled): (H, W) for rasters, (D, H, W) RAS-oriented for volumes.

    Unlabelled = NaN, the file's nodata (or ``nodata``) or ``ignore_value``; those positions hold ``ignore_value``
    (-1 if None). Float labels are rounded. Volumes follow the volume reader: closest-canonical RAS, and with
    ``spacing`` the same resampled grid (nearest neighbour). ``window`` = (row, col, h, w) reads part of a raster.
    """
    path = str(path)
    if kind == "raster":
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.windows import Window

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                with rasterio.open(path) as src:
                    if src.count != 1:
                        raise DataError(f"label raster '{path}' has {src.count} bands; a label raster holds one "
                                        "band of class ids.")
                    win = Window(window[1], window[0], window[3], window[2]) if window else None
                    arr = src.read(1, window=win)  # (H, W)
                    file_nodata = src.nodata
            except rasterio.errors.RasterioIOError as err:
                raise DataError(f"cannot read label raster '{path}' ({err}).") from None
        return _to_labels(arr, nodata if nodata is not None else file_nodata, ignore_value, path)
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as err:
        raise DataError(f"cannot read label volume '{path}' ({err}); is it a NIfTI file?") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"label volume '{path}' has shape {list(arr.shape)}; a label volume is 3D (one class id "
                        "per voxel).")
    labels, labelled = _to_labels(arr, nodata, ignore_value, path)  # (D, H, W) RAS
    if spacing is not None:
        new = _resampled_shape(labels.shape, np.asarray(img.affine, np.float64), spacing)
        idx = np.ix_(*[np.floor(np.arange(m) * ((n - 1) / (m - 1) if m > 1 else 0) + 0.5).astype(np.int64)
                       for n, m in zip(labels.shape, new)])  # nearest on the reader's align-corners grid
        labels, labelled = labels[idx], labelled[idx]
    return labels, labelled


# -- classes ----------------------------------------------------------------------------------------------------
def class_ids(labels_list: Sequence[np.ndarray], ignore_value: int | None = 0,
              masks: Sequence[np.ndarray] | None = None) -> list[int]:
    """Sorted class values present (under ``masks`` if given, else every value but ``ignore_value``)."""
    found: set[int] = set()
    for i, labels in enumerate(labels_list):
        vals = np.unique(labels[masks[i]] if masks is not None else labels)
        found.update(int(v) for v in vals)
    if masks is None and ignore_value is not None:
        found.discard(int(ignore_value))
    return sorted(found)


@dataclass(frozen=True)
class ClassMap:
    """Class values <-> contiguous indices 0..K-1, with display names."""

    values: tuple[int, ...]
    names: tuple[str, ...]

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
        """'class 9 (Oats)' or 'class 9'."""
        name = self.names[self.values.index(value)] if value in self.values else str(value)
        return f"class {value}" + (f" ({name})" if name != str(value) else "")


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


def _groups(values: np.ndarray, pool: np.ndarray | None) -> dict[int, np.ndarray]:
    """{class value: sorted indices into ``values`` (inside ``pool`` if given)}; every class present appears."""
    order = np.argsort(values, kind="stable")
    classes, starts = np.unique(values[order], return_index=True)
    out = {}
    for c, idx in zip(classes, np.split(order, starts[1:])):
        out[int(c)] = idx[pool[idx]] if pool is not None else idx
    return out


def _take(idx: np.ndarray, n: int, seed: int, c: int) -> np.ndarray:
    rng = np.random.default_rng((int(seed) & 0xFFFFFFFF, int(c) & 0xFFFFFFFF))
    return np.sort(rng.choice(idx, size=n, replace=False)) if n < idx.size else idx


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def sample_per_class(values: np.ndarray, k: int, seed: int, names: Names | ClassMap = None, unit: str = "pixel",
                     pool: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Indices (sorted) of ``k`` labelled items per class, and notes on classes that got fewer.

    Without ``pool`` the rest is the test set, so a class with n labels gives min(k, n // 2): half stay for testing.
    With ``pool`` (bool per item: the training blocks) only pool items are drawn, up to all of them.
    """
    cmap = names if isinstance(names, ClassMap) else ClassMap.build(np.unique(values), names)
    chosen, notes = [], []
    for c, idx in _groups(np.asarray(values), pool).items():
        n_c = idx.size
        n = min(k, n_c // 2) if pool is None else min(k, n_c)
        where = "" if pool is None else " in training blocks"
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
                    unit: str = "pixel", pool: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Indices of round(fraction * n_c) labelled items per class (at least 1 of each class present), and notes."""
    cmap = names if isinstance(names, ClassMap) else ClassMap.build(np.unique(values), names)
    chosen, notes = [], []
    for c, idx in _groups(np.asarray(values), pool).items():
        n_c = idx.size
        n = min(max(1, int(round(fraction * n_c))), n_c)
        if n_c == 0:
            notes.append(f"{cmap.label(c)}: no labelled {unit}s in training blocks, took none")
        elif n == n_c and pool is None:
            notes.append(f"{cmap.label(c)}: {_plural(n_c, 'labelled ' + unit)}, took all; none left for testing")
        elif n > fraction * n_c + 0.5:
            notes.append(f"{cmap.label(c)}: {_plural(n_c, 'labelled ' + unit)}, took 1 (at least one per class)")
        chosen.append(_take(idx, n, seed, c))
    return (np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)), notes


# -- block split ------------------------------------------------------------------------------------------------
def _block_grid(shape: Sequence[int], block_size: int) -> tuple[int, ...]:
    return tuple(-(-int(s) // block_size) for s in shape)


def _block_of(flat_index: np.ndarray, shape: Sequence[int], block_size: int) -> np.ndarray:
    """Block number (C order over the block grid) of each flat position of an array of ``shape``."""
    coords = np.unravel_index(flat_index, tuple(shape))
    return np.ravel_multi_index(tuple(c // block_size for c in coords), _block_grid(shape, block_size))


def _assign_blocks(n_blocks: int, block: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
    """Half the blocks (seeded) to training, then repaired so each class spread over >= 2 blocks has a training
    and a test block, and a class inside a single block trains (rarest classes decide last)."""
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
    return train


def block_split(shape: Sequence[int], block_size: int, seed: int, labels: np.ndarray | None = None,
                mask: np.ndarray | None = None) -> np.ndarray:
    """Bool map of ``shape`` (2D or 3D): True inside training blocks, False inside test blocks.

    The image is tiled into ``block_size`` blocks, half of them (seeded) for training; with ``labels`` (and their
    labelled ``mask``) the assignment is repaired so every class can give training and test samples.
    """
    grid = _block_grid(shape, block_size)
    n_blocks = int(np.prod(grid))
    if labels is not None:
        flat = np.flatnonzero(mask if mask is not None else np.ones(labels.shape, bool))
        train = _assign_blocks(n_blocks, _block_of(flat, shape, block_size), labels.reshape(-1)[flat], seed)
    else:
        train = _assign_blocks(n_blocks, np.zeros(0, np.int64), np.zeros(0, np.int64), seed)
    out = train.reshape(grid)
    for axis in range(len(shape)):
        out = np.repeat(out, block_size, axis=axis)
    return out[tuple(slice(0, s) for s in shape)]


# -- the selection ----------------------------------------------------------------------------------------------
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

    def summary(self) -> str:
        counts = np.bincount(self.class_map.encode(self.train_value), minlength=len(self.classes))
        lines = [f"{self.train_value.size} training and {self.test_value.size} test positions over "
                 f"{len(self.classes)} classes ({self.split} split, seed {self.seed})",
                 "  train per class: " + ", ".join(f"{v}:{n}" for v, n in zip(self.classes, counts))]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def save_npz(self, path: str | Path) -> None:
        """Write ``labels_used.npz`` (arrays + a JSON 'meta' string; loads without pickle)."""
        meta = {"version": 1, "classes": self.classes, "class_names": self.class_names, "notes": self.notes,
                "shapes": [list(s) for s in self.shapes], "split": self.split, "seed": self.seed, "paths": self.paths}
        arrays = {k: getattr(self, k) for k in ("train_file", "train_index", "train_value", "test_file",
                                                "test_index", "test_value")}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)

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
                   seed=int(meta["seed"]), paths=list(meta.get("paths", [])))


def check_labels_config(cfg: Any) -> None:
    """ConfigError for values of the ``labels`` section that cannot work."""
    if cfg.per_class is not None and cfg.fraction is not None:
        raise ConfigError("set labels.per_class or labels.fraction, not both.")
    if cfg.per_class is not None and int(cfg.per_class) < 1:
        raise ConfigError(f"labels.per_class must be >= 1, got {cfg.per_class}.")
    if cfg.fraction is not None and not 0 < cfg.fraction <= 1:
        raise ConfigError(f"labels.fraction must be in (0, 1], got {cfg.fraction}.")
    if cfg.split not in ("random", "blocks"):
        raise ConfigError(f"labels.split must be random or blocks, got '{cfg.split}'.")
    if int(cfg.block_size) < 1:
        raise ConfigError(f"labels.block_size must be >= 1, got {cfg.block_size}.")
    if cfg.test_fraction is not None and not 0 < cfg.test_fraction <= 1:
        raise ConfigError(f"labels.test_fraction must be in (0, 1], got {cfg.test_fraction}.")


def _subsample(idx: np.ndarray, values: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified subset of ``idx``: round(fraction * n_c) per class, at least 1."""
    keep = [_take(g, min(max(1, int(round(fraction * g.size))), g.size), seed + 7919, c)
            for c, g in _groups(values[idx], None).items()]
    return np.sort(idx[np.concatenate(keep)]) if keep else idx


def select_labels(labels_list: Sequence[np.ndarray], masks: Sequence[np.ndarray], cfg: Any,
                  names: Names | Sequence[str] = None, paths: Sequence[str] = ()) -> LabelSelection:
    """Draw the training positions from label arrays as the ``labels`` config says; the test set is the rest
    (random split) or the labelled positions of the test blocks (block split), subsampled by ``test_fraction``.

    Without per_class and fraction every labelled position of the training pool trains.
    """
    check_labels_config(cfg)
    shapes = [tuple(int(s) for s in a.shape) for a in labels_list]
    unit = "voxel" if shapes and len(shapes[0]) == 3 else "pixel"
    files, flats, values = labelled_pixels(labels_list, masks)
    if values.size == 0:
        raise DataError(f"no labelled {unit}s in {len(shapes)} label file(s) (ignore value {cfg.ignore_value}); "
                        "check labels.ignore_value and the label files' nodata.")
    cmap = ClassMap.build(np.unique(values), names)
    seed, notes = int(cfg.seed), []
    pool = None
    if cfg.split == "blocks":
        grids = [int(np.prod(_block_grid(s, cfg.block_size))) for s in shapes]
        if sum(grids) < 2:
            raise ConfigError(f"labels.block_size {cfg.block_size} leaves one block on "
                              f"{'x'.join(map(str, shapes[0]))}; "
                              "lower labels.block_size so blocks can be split between training and testing.")
        offsets = np.concatenate([[0], np.cumsum(grids)[:-1]]).astype(np.int64)
        block = np.empty(values.size, np.int64)
        for i, s in enumerate(shapes):
            sel = files == i
            block[sel] = offsets[i] + _block_of(flats[sel], s, cfg.block_size)
        pool = _assign_blocks(sum(grids), block, values, seed)[block]  # (N,) in a training block
    if cfg.per_class is not None:
        train, notes = sample_per_class(values, int(cfg.per_class), seed, cmap, unit, pool)
    elif cfg.fraction is not None:
        train, notes = sample_fraction(values, float(cfg.fraction), seed, cmap, unit, pool)
    else:
        train = np.flatnonzero(pool) if pool is not None else np.arange(values.size)
    if pool is None:
        rest = np.ones(values.size, bool)
        rest[train] = False
        test = np.flatnonzero(rest)
    else:
        test = np.flatnonzero(~pool)
    if cfg.test_fraction is not None and test.size:
        test = _subsample(test, values, float(cfg.test_fraction), seed)
    tested = set(np.unique(values[test]).tolist())
    for c in cmap.values:
        if c not in tested:
            notes.append(f"{cmap.label(c)}: no test {unit}s left; it is not evaluated")
    return LabelSelection(files[train], flats[train], values[train], files[test], flats[test], values[test],
                          list(cmap.values), list(cmap.names), shapes, notes, cfg.split, seed, [str(p) for p in paths])


# -- classification datasets ------------------------------------------------------------------------------------
def scan_class_folders(root: str | Path, data_cfg: Any) -> tuple[list[FileRecord], np.ndarray, list[str]]:
    """A folder per class (EuroSAT style) of GeoTIFFs or NIfTIs: (records, class index per record (int64), class
    names = sorted folder names). One scan of ``root``, so every class shares the band set; problem files are
    skipped with a warning."""
    catalog = scan(root, data_cfg)
    base = Path(catalog.root or root)
    folder_of = {r.path: Path(os.path.relpath(r.path, base)).parts for r in catalog.records}
    loose = [p for p, parts in folder_of.items() if len(parts) < 2]
    if loose:
        shown = ", ".join(map(os.path.basename, loose[:3]))
        raise DataError(f"{len(loose)} images lie directly in '{base}' ({shown}); "
                        "a classification dataset has one subfolder per class holding its images.")
    names = sorted({parts[0] for parts in folder_of.values()})
    if len(names) < 2:
        raise DataError(f"'{base}' has images in {len(names)} class folder(s) ({', '.join(names)}); "
                        "classification needs at least two class folders.")
    if catalog.problems:
        warnings.warn(f"{len(catalog.problems)} problem file(s) skipped:\n" + catalog.summary(), stacklevel=2)
    records = sorted(catalog.records, key=lambda r: (folder_of[r.path][0], r.path))
    labels = np.array([names.index(folder_of[r.path][0]) for r in records], np.int64)
    return records, labels, names


def sample_images_per_class(labels: np.ndarray, k: int, seed: int,
                            names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train indices, test indices, notes): k images per class (at most half of a class), the rest test."""
    labels = np.asarray(labels, np.int64)
    mapping = dict(enumerate(names)) if names is not None else None
    train, notes = sample_per_class(labels, k, seed, mapping, unit="image")
    rest = np.ones(labels.size, bool)
    rest[train] = False
    return train, np.flatnonzero(rest), notes
