"""Label files matched to their images (grid-checked: :mod:`geomed_ssl.labels.grids`), read as integer class maps
(:mod:`geomed_ssl.labels.read`), and what stands for each file's ground (copies of one map beside several dates)."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.data.catalog import EXTENSIONS, FileRecord
from geomed_ssl.geo.grids import grid_identity
from geomed_ssl.files.listing import absolute, walk
from geomed_ssl.data.readers import valid_map
from geomed_ssl.geo.voxels import mm_affine, nearest_index, resampled_shape, voxel_mm
from geomed_ssl.tables import LINE, FileIndex, header_names, read_rows
from geomed_ssl.labels.grids import check_grid, ras_grid
from geomed_ssl.labels.read import MAX_CLASS_VALUE, UnlabelledFacts, read_label
from geomed_ssl.labels.sampling import Sources
from geomed_ssl.windows.splits import GROUND_PREFIX
from geomed_ssl.errors import DataError

LABEL_SUFFIXES = ("gt", "label", "labels", "mask", "seg", "segmentation", "annotation", "annotations", "truth",
                  "dseg", "gmseg", "wmseg")  # dseg: BIDS derivatives; gmseg / wmseg: the Spinal Cord Toolbox
# words that may follow a label suffix: t1w_seg-manual, mt1_gmseg_goldstandard, t2_seg-manual_labeled
LABEL_QUALIFIERS = ("manual", "goldstandard", "gold", "labeled", "labelled", "ref", "reference", "corrected")
log = logging.getLogger("geomed_ssl")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")  # --labels read as an image,label table, not a raster
POINT_COLUMNS = {"x", "y", "lon", "lat", "long", "longitude", "latitude", "easting", "northing", "row", "col"}


# -- matching label files to images ---------------------------------------------------------------------------
def _stem(path: str | Path) -> str:
    """The file name without its extension, accents composed (NFC: a macOS copy writes them decomposed)."""
    name = unicodedata.normalize("NFC", os.path.basename(str(path)))
    for ext in (".nii.gz", ".nii", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _label_keys(stem: str) -> list[str]:
    """Image stems a label file name can belong to: its own stem, and its stem without a known label suffix (and
    the qualifiers after it: ``t1w_seg-manual`` -> ``t1w``)."""
    low = stem.lower()
    keys, head, labelled = [low], low, False
    while (cut := max(head.rfind(sep) for sep in "_-.")) > 0:
        tail = head[cut + 1:]
        if tail in LABEL_SUFFIXES:
            labelled = True
        elif tail not in LABEL_QUALIFIERS:
            break
        head = head[:cut]
        if labelled:
            keys.append(head)
    return keys


# BIDS entities a derivative keeps from its source image (its own: space-, desc-, res-, den-, label-)
BIDS_SOURCE = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "flip", "inv", "mt", "part")


def _bids_key(stem: str) -> str | None:
    """``sub-01_ses-1_T1w`` and its derivative ``sub-01_ses-1_space-orig_desc-tumor_dseg`` -> ``sub-01_ses-1``
    (None: not a BIDS name); a BIDS label drops the image's suffix (T1w), so names alone never pair them."""
    parts = stem.lower().split("_")
    if not parts[0].startswith("sub-"):
        return None
    return "_".join(p for p in parts if p.split("-", 1)[0] in BIDS_SOURCE and "-" in p)


def _shared_parents(a: str, b: str) -> int:
    """How many trailing folder names the two paths share (labels/tile_3/x.tif ~ images/tile_3/x.tif -> 1)."""
    n = 0
    for x, y in zip(reversed(Path(a).parent.parts), reversed(Path(b).parent.parts)):
        if unicodedata.normalize("NFC", x) != unicodedata.normalize("NFC", y):  # a macOS copy's folder names
            break
        n += 1
    return n


def _by_name(records: list[FileRecord], label_dir: Path, kind: str) -> dict[str, str | None]:
    images = {os.path.realpath(p) for r in records for p in r.paths}  # real paths: a labels folder may link here
    index: dict[str, list[str]] = {}
    reals: dict[str, set[str]] = {}  # per name key, the real files indexed: one file under two names is one
    named_as_labels: list[str] = []  # x_gt.tif, x_mask.tif: a label of some image, surely
    for folder, dirs, files in walk(label_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(f for f in files if not f.startswith(".")):
            path = os.path.abspath(os.path.join(folder, f))
            real = os.path.realpath(path)
            if f.lower().endswith(EXTENSIONS[kind]) and real not in images:
                keys = _label_keys(_stem(f))
                if len(keys) > 1:
                    named_as_labels.append(path)
                bids = _bids_key(_stem(f)) if len(keys) > 1 else None  # a BIDS label (…_dseg): its entities
                for key in keys + ([f"bids:{bids}"] if bids else []):
                    if real not in reals.setdefault(key, set()):
                        reals[key].add(real)
                        index.setdefault(key, []).append(path)
    same_stem: dict[str, list[str]] = {}
    for r in records:
        same_stem.setdefault(_stem(r.path).lower(), []).append(r.path)
    out: dict[str, str | None] = {}
    for r in records:
        stem = _stem(r.path).lower()
        found = (index.get(stem) or index.get(f"bids:{_bids_key(stem)}")
                 or (index.get(unicodedata.normalize("NFC", r.case or Path(r.path).parent.name).lower())  # a stack
                     if len(r.paths) > 1 or r.case else None)
                 or (index.get(stem[:-5]) if re.fullmatch(r".+_\d{4}", stem) else None) or [])  # nnU-Net's _0000
        if len(found) > 1:  # Tile.tif and tile.tif: each takes the label of its own case when there is one
            exact = [f for f in found if _stem(f).startswith(_stem(r.path))]
            found = exact if len(exact) == 1 else found
        if len(found) > 1:
            score = [_shared_parents(r.path, f) for f in found]
            found = [f for f, s in zip(found, score) if s == max(score)]
        if len(found) > 1:
            raise DataError(f"image '{r.path}' matches {len(found)} label files ({', '.join(found[:4])}); "
                            "keep one, or list image,label pairs in a labels CSV.")
        # labels/pat1/flair_seg.nii.gz is pat1's, not also pat2's flair: a label shared by several images of one
        # stem (dates of one ground) must sit as near each of them as any other
        if found and _shared_parents(r.path, found[0]) < max(_shared_parents(p, found[0]) for p in same_stem[stem]):
            found = []
        out[r.path] = found[0] if found else None
    paired = {os.path.realpath(v) for v in out.values() if v}
    unused = [p for p in named_as_labels if os.path.realpath(p) not in paired]
    if unused:  # the label of an image not read: missing, named otherwise, excluded (or another subset's: a note)
        log.info(f"note: {len(unused)} file(s) under '{label_dir}' named as labels pair with no image read here (e.g. "
                 f"'{os.path.relpath(unused[0], label_dir)}'); if one should, its image is missing, named otherwise, "
                 "or left out by data.include / data.exclude or a problem above.")
    return out


def image_index(records: Sequence[FileRecord]) -> FileIndex:
    """The images a table's rows may name, each by its path, its files' paths and, for a stack of band files of one
    case, its folder."""
    stacks = {r.path: os.path.dirname(r.paths[0]) for r in records if len(r.paths) > 1 and not r.case}
    return FileIndex((p, r.path) for r in records
                     for p in dict.fromkeys([r.path, *r.paths, *([stacks[r.path]] if r.path in stacks else [])]))


def _by_csv(records: list[FileRecord], csv_path: Path, label_dir: Path | None) -> dict[str, str | None]:
    """Each image's label file from a labels CSV (image,label). An image path is absolute, relative to the CSV's
    folder or to the working folder, or the tail of one image's path under the images folder (``2019/tile.tif``, a
    bare file name); ``\\`` separators are read as ``/``. A row for a file that exists outside the catalog (one CSV for
    several folders) is passed over; a row whose image exists nowhere, or names one image twice with two labels, is
    said, never guessed at."""
    try:
        rows = read_rows(csv_path, ("image", "label"), "labels CSV")
    except DataError as err:
        if len(POINT_COLUMNS & set(header_names(csv_path))) >= 2:
            raise DataError(f"{err} Its columns look like points (coordinates and a class): segmentation labels are "
                            "label rasters on the image grid; rasterise the points onto it first (docs/cli.md, "
                            "'Point labels').") from None
        raise
    base = csv_path.parent
    label_base = label_dir if label_dir is not None and label_dir.is_dir() else base
    index = image_index(records)
    out: dict[str, str | None] = {r.path: None for r in records}
    line_of: dict[str, str] = {}
    unknown: list[str] = []
    left_out: list[str] = []
    roots = {os.path.realpath(os.path.dirname(p)) for r in records for p in r.paths}
    for row in rows:
        i = row[LINE]
        image, label = (row[k].replace("\\", "/") if os.sep == "/" else row[k] for k in ("image", "label"))
        if not image or not label:
            raise DataError(f"labels CSV '{csv_path}' line {i}: empty image or label entry.")
        key = index.find(image, (base, ""), f"labels CSV '{csv_path}' line {i}", "matches {} images")
        if key is None:
            found = next((c for c in (base / image, Path(image)) if os.path.isfile(c)), None)
            if found is None:  # nowhere, or a folder that is no stack
                unknown.append(f"line {i} ('{image}')")
            elif _under_any(found, roots):  # among the images' folders, yet not read as an image
                left_out.append(f"line {i} ('{image}')")
            continue  # a row for an image outside this catalog
        path = Path(label) if os.path.isabs(label) else label_base / label
        if not path.is_file() and Path(label).is_file():  # relative to the working folder, as its image may be
            path = absolute(label)
        if not path.is_file():
            raise DataError(f"labels CSV '{csv_path}' line {i}: label file '{path}' does not exist (label paths are "
                            "absolute, or relative to the CSV's folder or the working folder).")
        if out[key] is not None and os.path.realpath(out[key]) != os.path.realpath(path):
            raise DataError(f"labels CSV '{csv_path}' lists image '{key}' twice with different labels (line "
                            f"{line_of[key]}: '{out[key]}', line {i}: '{path}'); keep one row per image.")
        out[key], line_of[key] = str(path), i
    if unknown:
        shown = "; ".join(unknown[:4]) + (f"; and {len(unknown) - 4} more" if len(unknown) > 4 else "")
        log.warning(f"warning: labels CSV '{csv_path}': {len(unknown)} row(s) name an image that is neither among the "
                    f"images nor a file on disk ({shown}); they are not used. Image paths are absolute, relative to "
                    f"the CSV's folder ({base}) or the working folder, or a file name / the end of a path under the "
                    "images folder (a stack of band files: its folder).")
    if left_out:
        shown = "; ".join(left_out[:4]) + (f"; and {len(left_out) - 4} more" if len(left_out) > 4 else "")
        log.warning(f"warning: labels CSV '{csv_path}': {len(left_out)} row(s) name a file beside the images that is "
                    f"not read as one ({shown}): left out by data.include / data.exclude (the recipe's label and "
                    "mask patterns among them) or as a problem file (see the scan's lines); they are not used.")
    return out


def _under_any(path: str | Path, folders: set[str]) -> bool:
    """Whether ``path`` lies directly in one of ``folders`` (real paths)."""
    return os.path.dirname(os.path.realpath(path)) in folders


def match_labels(image_records: Sequence[FileRecord], label_dir: str | Path | None, kind: str,
                 csv: str | Path | None = None, allow_unlabelled: bool = False,
                 label_name: str | None = None) -> list[tuple[FileRecord, str]]:
    """Pair each image with its label file and check they share one grid.

    ``label_dir`` is a folder searched recursively for files named like the image (same stem, or the stem plus
    ``_gt``/``_label``/``_mask``/``_seg``/...), or one label file shared by every image (one scene, many dates).
    ``csv`` (columns image,label; relative paths from the CSV's folder, labels from ``label_dir`` if given) pairs
    them explicitly, and says which images are used (the ones it does not list are left out); ``label_name`` is a
    fixed file name beside each image (one folder per case, e.g. BraTS). Otherwise images without a label are a
    DataError unless ``allow_unlabelled`` (they are then left out).
    """
    records = list(image_records)
    if label_name is not None:
        beside = {r.path: os.path.join(os.path.dirname(r.path), label_name) for r in records}
        found = {k: v if os.path.isfile(v) else None for k, v in beside.items()}
    elif csv is not None:
        found = _by_csv(records, Path(csv), Path(label_dir) if label_dir else None)
    elif label_dir is None:
        raise DataError("no labels given: pass --labels with a label folder (the images' folder itself when each label "
                        "sits beside its image, named like it: scan_seg.nii.gz), a label file or a labels CSV "
                        "(image,label); or labels.label_name for one label file name in each case's folder.")
    elif Path(label_dir).is_file():
        found = {r.path: str(label_dir) for r in records}
    elif Path(label_dir).is_dir():
        found = _by_name(records, Path(label_dir), kind)
    else:
        raise DataError(f"labels '{label_dir}' do not exist (give a label folder, a label file or a CSV).")
    missing = [r.path for r in records if found[r.path] is None]
    where = f"'{label_name}' beside each image" if label_name else f"'{csv or label_dir}'"
    if missing and (csv is not None or allow_unlabelled):
        if csv is not None and len(missing) < len(records):  # the CSV says which images are labelled
            log.info("%d of %d images are not in the labels CSV '%s'; only the images it lists are used.",
                     len(missing), len(records), csv)
    elif missing:
        common = os.path.commonpath([r.path for r in records]) if len(records) > 1 else os.path.dirname(missing[0])
        case = {r.path: r.case for r in records if r.case}  # a case of a folder of several: named after it
        names = ", ".join(os.path.relpath(p, common) + (f" (case {case[p]})" if p in case else "")
                          for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        ext = EXTENSIONS[kind][-1]
        cases = f"; a case's after the case: case_000 -> case_000{ext}" if case else ""
        raise DataError(f"{len(missing)} of {len(records)} images have no label file ({names}) in {where}. Name "
                        f"labels like the image (x{ext} -> x{ext} in the label folder, or x_gt{ext} / x_mask{ext} / "
                        f"x_seg{ext} / x_seg-manual{ext} / x_dseg{ext} beside it{cases}), list pairs "
                        "in a labels CSV (image,label; the images it leaves out are not used), give the one label file "
                        "itself when it serves every image (dates of one ground), or leave the unlabelled images out "
                        "with --set \"data.exclude=[...]\".")
    pairs = [(r, found[r.path]) for r in records if found[r.path] is not None]
    if not pairs:
        raise DataError(f"no image has a label file in {where}.")
    served: dict[str, list[FileRecord]] = {}
    for record, label in pairs:
        served.setdefault(os.path.realpath(label), []).append(record)
    for record, label in pairs:
        check_grid(record, label, kind, [r for r in served[os.path.realpath(label)] if r is not record])
    return pairs  # type: ignore[return-value]


def label_sources(paths: Sequence[str], data: Any) -> list[Sources | None]:
    """Per label file, where each position of its array was read from in the file, when :func:`read_label`
    resampled it onto the ``data.spacing`` grid (volumes; None elsewhere): the per-axis indices into the file's
    (RAS) grid and that grid's shape, from the header. The copies a finer grid makes of one voxel are one place of
    the ground: :func:`select_labels` never trains on one and tests on another."""
    if data.kind != "volume" or data.spacing is None:
        return [None] * len(paths)
    import nibabel as nib

    out: list[Sources | None] = []
    for path in paths:
        img = nib.load(path)
        shape, affine = ras_grid(img.shape[:3], mm_affine(img))
        new = resampled_shape(shape, voxel_mm(affine), data.spacing)
        out.append((tuple(a.reshape(-1) for a in nearest_index(shape, new)), shape))
    return out


def ground_key(record: FileRecord, values: np.ndarray) -> str | None:
    """``ground:<digest>`` of a georeferenced raster's pixel grid and label values: what copies of one label map
    beside each date of a scene share; None for a volume (subjects registered to one template share its grid, and
    healthy controls' empty masks or atlas-propagated labels their values) or a raster without a CRS (nothing places
    it)."""
    if record.kind != "raster" or not record.crs:
        return None
    import hashlib

    digest = hashlib.sha256(repr(grid_identity(record.shape, record.crs, record.transform)).encode())
    digest.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    return GROUND_PREFIX + digest.hexdigest()


def label_grounds(pairs: Sequence[tuple[FileRecord, str]], arrays: Sequence[np.ndarray]) -> list[str]:
    """Per pair, what stands for its ground when images are grouped: the :func:`ground_key` of its label values on
    its grid (copies of one label map beside each date of a scene are one ground: a place trained at one date is
    tested at none; budgets count places), else its label path. Only for grouping and for ``evaluate`` to find the
    places a model trained on at another date: selections keep each image's own label path."""
    out = [ground_key(record, values) or str(path) for (record, path), values in zip(pairs, arrays)]
    firsts: dict[str, str] = {}
    copies = [(str(p), firsts.setdefault(g, str(p))) for (_, p), g in zip(pairs, out) if g.startswith(GROUND_PREFIX)]
    copies = [(p, q) for p, q in copies if os.path.realpath(p) != os.path.realpath(q)]
    if copies:
        log.info("%d label file(s) hold the same labels as another on the same grid ('%s' as '%s'%s): their images "
                 "are taken as dates of one ground, so a place that trains at one date is tested at none",
                 len(copies), *copies[0], ", ..." if len(copies) > 1 else "")
    return out


def read_label_pairs(records: Sequence[FileRecord], labels: str | Path | None, lab: object, data: object,
                     allow_unlabelled: bool = False, class_range: bool = True,
                     ) -> tuple[list[tuple[FileRecord, str]], list[np.ndarray], list[np.ndarray]]:
    """Pair images with labels as the ``labels`` recipe section says and read them all.

    ``labels`` is a label folder, one label file, or a ``.csv`` of image,label pairs; with ``lab.label_name`` it
    may be None (the label is that file beside each image). Returns the pairs and, per pair, the label array and
    its labelled mask (``lab.remap`` and ``lab.ignore_value`` applied; volumes on the ``data.spacing`` grid; positions
    where the image has no data left out, with a warning, so every protocol trains and tests on the same ones).
    ``class_range``: refuse class values a class map cannot store (training; ``evaluate`` scores known classes only).
    """
    is_csv = labels is not None and str(labels).lower().endswith(TABLE_SUFFIXES)
    pairs = match_labels(records, None if is_csv else labels, data.kind, csv=labels if is_csv else None,
                         allow_unlabelled=allow_unlabelled, label_name=lab.label_name)
    arrays, masks, facts = [], [], UnlabelledFacts()
    for record, path in pairs:
        values, labelled = read_label(path, data.kind, lab.ignore_value, spacing=data.spacing, remap=lab.remap,
                                      warn_coverage=True, facts=facts, use_file_nodata=lab.use_nodata)
        held = values[labelled]
        if class_range and held.size and (held.min() < 0 or held.max() > MAX_CLASS_VALUE):  # predict's class maps
            bad = int(held.min()) if held.min() < 0 else int(held.max())
            raise DataError(f"label file '{path}' holds the value {bad} as a class; class values must lie in "
                            f"[0, {MAX_CLASS_VALUE}]. If it marks unlabelled pixels, set labels.ignore_value to it "
                            "(or give the file that nodata); else renumber with labels.remap.")
        valid = valid_map(record, data, labelled)
        off = int(np.count_nonzero(labelled & ~valid)) if valid is not None else 0
        if off:  # a label where the image has no data can neither train nor be predicted: left out of both
            unit = "voxel" if labelled.ndim == 3 else "pixel"
            log.warning("warning: %d labelled %s(s) of '%s' lie where '%s' has no data (nodata or NaN); they "
                        "neither train nor test.", off, unit, path, record.path)
            labelled = labelled & valid
        arrays.append(values)
        masks.append(labelled)
    empty = [path for (_, path), m in zip(pairs, masks) if not m.any()]
    if empty and len(empty) < len(pairs):  # none labelled at all: the callers' error, naming the ignore value
        log.warning(f"warning: {len(empty)} of {len(pairs)} label files hold no labelled pixel or voxel (e.g. "
                    f"'{empty[0]}': all are its nodata or labels.ignore_value {lab.ignore_value}, or lie where its "
                    "image has no data), so their images neither train nor test.")
    facts.warn(lab.ignore_value)
    return pairs, arrays, masks


def label_colors(paths: Sequence[str], values: Sequence[int]) -> list[list[int] | None] | None:
    """The RGB the first label raster with a colour table (a land-cover map's palette) gives each class value, for
    the class maps ``predict`` writes; None when no label file has one."""
    import rasterio

    for path in dict.fromkeys(str(p) for p in paths):
        if not path.lower().endswith((".tif", ".tiff")):
            continue
        try:
            with rasterio.open(path) as ds:
                table = ds.colormap(1)
        except Exception:  # noqa: BLE001 - no colour table (GDAL: "NULL color table"), or unreadable: none taken
            continue
        return [list(table[v][:3]) if v in table else None for v in values]
    return None
