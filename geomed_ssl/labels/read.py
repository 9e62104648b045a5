"""One label file read as an integer class map: rasters (a window of one too) and NIfTI volumes (RAS, on the
``data.spacing`` grid of the volume reader), unlabelled positions (NaN, nodata, GDAL's mask, ``labels.ignore_value``)
left out, float labels rounded, and what the files suggest about how they mark unlabelled pixels said once
(:class:`UnlabelledFacts`). ``geomed_ssl.labels.pairs`` pairs label files with images and reads them here."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from geomed_ssl.geo.validity import is_fill
from geomed_ssl.errors import DataError, innermost_message
from geomed_ssl.labels.draws import unique_ints
from geomed_ssl.geo.gdal_read import has_dataset_mask
from geomed_ssl.geo.voxels import AFFINE_PROBLEM, maps_a_grid, mm_affine, nearest_index, resampled_shape, voxel_mm
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
_SAID_COVERAGE = said_set()  # (data.spacing, label voxel size) whose skipped labelled voxels were warned about
MAX_CLASS_VALUE = 65534  # the largest label value a class map stores (uint16; 65535 is its nodata)


@dataclass
class UnlabelledFacts:
    """What users' label files suggest about how they mark unlabelled pixels, gathered over the files of a command
    and said once (:meth:`warn`): values ``labels.ignore_value`` leaves out of files whose nodata tag marks the
    unlabelled pixels already (a class 0 beside a nodata tag of 255), and 255 trained as a class where it fills
    most of an untagged file (the usual "ignore" value of segmentation label maps), and ``labels.ignore_value``
    filling most of an untagged label volume whose other voxels form solid regions: a dense map whose background
    (0 in most medical label maps) is left out, so the model would give every voxel one of the other classes; and,
    with no ignore value, 0 filling most of a volume beside lines of several classes: scribbles' unlabelled voxels
    trained as a class; and a nodata tag (not ``labels.ignore_value``) leaving out a value next to the classes kept:
    a class lost to the tag (``labels.use_nodata``)."""

    beside_nodata: list[tuple[str, int, str]] = field(default_factory=list)  # (path, pixels left out, its mark)
    background_255: list[tuple[str, float]] = field(default_factory=list)  # (path, share of the labelled pixels)
    ignored_background: list[tuple[str, float]] = field(default_factory=list)  # (path, share of its voxels)
    scattered_zero: list[tuple[str, float]] = field(default_factory=list)  # (path, share of its voxels)
    tag_like_class: list[tuple[str, int, float]] = field(default_factory=list)  # (path, pixels left out, the tag)

    def warn(self, ignore_value: int | None) -> None:
        if self.beside_nodata:
            path, count, mark = self.beside_nodata[0]
            more = f" (and {len(self.beside_nodata) - 1} more file(s))" if len(self.beside_nodata) > 1 else ""
            log.warning(f"warning: label file '{path}'{more} marks its unlabelled pixels with {mark}, yet "
                        f"labels.ignore_value {ignore_value} also leaves out its {count} pixel(s) of value "
                        f"{ignore_value}: if {ignore_value} is a class there, set labels.ignore_value=null.")
        if self.background_255:
            path, share = self.background_255[0]
            more = f" (and {len(self.background_255) - 1} more file(s))" if len(self.background_255) > 1 else ""
            log.warning(f"warning: the value 255 fills {share:.0%} of the labelled pixels of '{path}'{more}, which "
                        "has no nodata value, and is trained as a class; if 255 marks unlabelled pixels, set "
                        "labels.ignore_value=255 (or give the file that nodata).")
        if self.ignored_background:
            path, share = self.ignored_background[0]
            more = f" (and {len(self.ignored_background) - 1} more file(s))" if len(self.ignored_background) > 1 else ""
            log.warning(f"warning: the value {ignore_value} fills {share:.0%} of label volume '{path}'{more} and is "
                        f"left out as unlabelled (labels.ignore_value={ignore_value}), while the other voxels form "
                        "solid regions, as in a dense label map: the model learns no background and will give every "
                        f"voxel one of the other classes. If {ignore_value} is background there (as in most medical "
                        "label maps), set labels.ignore_value=null; if it marks unlabelled voxels, keep it.")
        if self.scattered_zero:
            path, share = self.scattered_zero[0]
            more = f" (and {len(self.scattered_zero) - 1} more file(s))" if len(self.scattered_zero) > 1 else ""
            log.warning(f"warning: the value 0 fills {share:.2%} of label volume '{path}'{more} and is trained as "
                        "a class (labels.ignore_value null, as the volume recipes set it), while the other voxels of "
                        "several classes lie on lines, as scribbles do: if 0 marks unlabelled voxels there, set "
                        "labels.ignore_value=0.")
        if self.tag_like_class:
            path, count, tag = self.tag_like_class[0]
            more = f" (and {len(self.tag_like_class) - 1} more file(s))" if len(self.tag_like_class) > 1 else ""
            log.warning(f"warning: label file '{path}'{more} has the nodata value {tag:g}, so its {count} pixel(s) of "
                        f"value {tag:g} are left out as unlabelled, though {tag:g} lies beside its class values "
                        f"and labels.ignore_value is {ignore_value if ignore_value is not None else 'null'}: if "
                        f"{tag:g} is a class there{' (a 0 / 1 mask saved with nodata 0)' if tag == 0 else ''}, set "
                        "labels.use_nodata=false.")


MAX_DISTINCT_CLASSES = 512  # above any atlas' label count (FreeSurfer aparc.a2009s+aseg ~190, TotalSegmentator 117)


def _to_labels(arr: np.ndarray, nodata: float | None, ignore_value: int | None,
               path: str, remap: dict | None = None, valid: np.ndarray | None = None,
               facts: UnlabelledFacts | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``valid``: False where GDAL's per-dataset mask says the pixel is missing (None: no such mask); ``facts``
    gathers what the file suggests about its unlabelled pixels (users' labels)."""
    missing = is_fill(arr, nodata) if nodata is not None and math.isfinite(nodata) else None
    if valid is not None:
        missing = ~valid if missing is None else missing | ~valid
    if arr.dtype.kind == "f":
        labelled = np.isfinite(arr) if missing is None else np.isfinite(arr) & ~missing  # nodata: no class id
        vals = arr[labelled]
        if ignore_value is not None:  # sparse labels: the share is of the labelled pixels, not of the unlabelled fill
            vals = vals[vals != ignore_value]
        fractional = np.abs(vals - np.rint(vals)) > 1e-3
        off = np.count_nonzero(fractional) / max(vals.size, 1)
        if off > 0.01:
            raise DataError(f"label file '{path}' holds non-integer values ({off:.0%} of its labelled pixels); labels "
                            "are class ids. Is this an image rather than a label map?")
        if off > 0:
            examples = sorted({float(v) for v in vals[fractional][:1000]})[:3]
            lost = 0 if ignore_value is None else int(np.count_nonzero(np.rint(vals[fractional]) == ignore_value))
            log.warning("warning: label file '%s' holds %d non-integer value(s) (e.g. %s); they were rounded to the "
                        "nearest class id%s. Fix the label file if they are not rounding noise.", path,
                        int(np.count_nonzero(fractional)), ", ".join(f"{v:g}" for v in examples),
                        f" ({lost} to the ignore value {ignore_value}: unlabelled)" if lost else "")
        labels = np.rint(np.where(labelled, arr, 0)).astype(np.int64)
    elif arr.dtype.kind in "iub":
        labelled = np.ones(arr.shape, bool) if missing is None else ~missing
        labels = arr.astype(np.int32 if arr.dtype.itemsize < 4 or arr.dtype == np.int32 else np.int64)  # 4 B a pixel
    else:
        raise DataError(f"label file '{path}' has unsupported data type {arr.dtype}; use integer class ids.")
    if remap:
        lut_from = np.array([int(k) for k in remap], np.int64)
        lut_to = np.array([int(v) for v in remap.values()], np.int64)
        hit = np.isin(labels, lut_from) & labelled
        order = np.argsort(lut_from)
        labels[hit] = lut_to[order][np.searchsorted(lut_from[order], labels[hit])]
    distinct = unique_ints((labels if remap else arr)[labelled]).size if arr.dtype.kind in "iu" else 0  # (float: above)
    if distinct > MAX_DISTINCT_CLASSES:
        raise DataError(f"label file '{path}' holds {distinct} distinct values (after labels.remap); labels are class "
                        f"ids, and a model of more than {MAX_DISTINCT_CLASSES} classes is not what few labels train. "
                        "Is this an image rather than a label map? If not, merge classes with labels.remap.")
    if facts is not None:
        mark = _unlabelled_mark(arr, nodata, valid)
        if ignore_value is not None and mark is not None and ignore_value != nodata:
            left_out = int(np.count_nonzero(labelled & (labels == ignore_value)))
            if left_out and path not in {f[0] for f in facts.beside_nodata}:
                facts.beside_nodata.append((path, left_out, mark))
        if mark is None and ignore_value != 255 and labelled.any():
            share = np.count_nonzero(labelled & (labels == 255)) / np.count_nonzero(labelled)
            not_mask = share > 0.5 and not np.isin(labels[labelled], (0, 255)).all()  # a 0 / 255 mask: 255 a class
            if not_mask and path not in {f[0] for f in facts.background_255}:
                facts.background_255.append((path, float(share)))
        if mark is None and labels.ndim == 3 and labelled.any():
            _volume_facts(labels, labelled, ignore_value, path, facts)
        _tag_facts(arr, nodata, ignore_value, labels, labelled, path, facts)
    if ignore_value is not None:
        labelled &= labels != ignore_value
    labels[~labelled] = -1 if ignore_value is None else ignore_value
    return labels, labelled


SOLID, ON_LINES = 0.5, 0.8  # shares of a label map's voxels in regions (>= 5 of 6 face neighbours labelled) /
# on lines (1 or 2 of their 26 neighbours labelled: strokes in any direction)
MIN_SCRIBBLE = 50  # labelled voxels that can tell scribbles from a few landmark points


def _volume_facts(labels: np.ndarray, labelled: np.ndarray, ignore_value: int | None, path: str,
                  facts: UnlabelledFacts) -> None:
    """What a label volume's shape says of its unlabelled voxels: ``ignore_value`` filling most of it around solid
    regions, with its value also inside the extent of every labelled slice along some axis (a dense map's
    background left out; fully labelled slices hold none), or, with no ignore value, 0 filling most of it beside
    lines of two or more classes (scribbles: 0 trained as a class where it marks unlabelled voxels; not a
    centreline or landmark points)."""
    value = 0 if ignore_value is None else ignore_value
    left = labelled & (labels == value)
    share = np.count_nonzero(left) / np.count_nonzero(labelled)
    rest = labelled & ~left
    if share <= 0.5 or not rest.any():
        return
    faces = _face_neighbours(rest)
    inside = np.count_nonzero(rest & (faces >= 5)) / np.count_nonzero(rest)  # in solid regions (organs, lesions)
    if ignore_value is not None and inside > SOLID and _within_slices(rest, left) > 0.05:
        if path not in {f[0] for f in facts.ignored_background}:
            facts.ignored_background.append((path, float(share)))
    elif ignore_value is None and inside <= SOLID and np.count_nonzero(rest) >= MIN_SCRIBBLE \
            and unique_ints(labels[rest]).size >= 2 and _line_share(rest, faces) > ON_LINES \
            and path not in {f[0] for f in facts.scattered_zero}:
        facts.scattered_zero.append((path, float(share)))


def _face_neighbours(mask: np.ndarray) -> np.ndarray:
    """How many of each voxel's six face neighbours are True (uint8)."""
    neighbours = np.zeros(mask.shape, np.uint8)
    for axis in range(3):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        neighbours[lo] += mask[hi]
        neighbours[hi] += mask[lo]
    return neighbours


def _line_share(mask: np.ndarray, faces: np.ndarray) -> float:
    """The share of ``mask``'s True voxels on the strokes of scribbles, whatever their direction: one or two True
    voxels among their six face neighbours (``faces``: :func:`_face_neighbours`; a straight or staircase stroke) or
    among all 26 (a diagonal one, whose voxels touch by their edges)."""
    from scipy.ndimage import correlate

    around = correlate(mask.view(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") - mask.view(np.uint8)
    on_line = ((faces >= 1) & (faces <= 2)) | ((around >= 1) & (around <= 2))
    return np.count_nonzero(mask & on_line) / np.count_nonzero(mask)


def _within_slices(mask: np.ndarray, other: np.ndarray) -> float:
    """The least, over the three axes, share of ``other`` inside the labelled slices' bounding boxes of ``mask``
    voxels (all such slices of that axis together): a slice labelled across its whole width or height (fully
    labelled slices, slabs of them or of labelled rows, wherever they lie) is taken within its own box, which holds
    none; any other slice within the box of every labelled slice of its axis, so organs in air, round or box-shaped,
    hold some along every axis."""
    shares = []
    for axis in range(3):
        m, o = np.moveaxis(mask, axis, 0), np.moveaxis(other, axis, 0)  # (K, H, W) views
        held = m.any(axis=(1, 2))
        m, o = m[held], o[held]
        rows, cols = _span(m.any(axis=2)), _span(m.any(axis=1))  # (K, H), (K, W): each slice's labelled extent
        whole = rows.all(axis=1) | cols.all(axis=1)  # a slice labelled across its whole height or width
        rows = np.where(whole[:, None], rows, _span(rows.any(axis=0, keepdims=True)))
        cols = np.where(whole[:, None], cols, _span(cols.any(axis=0, keepdims=True)))
        inside = np.count_nonzero(o & rows[:, :, None] & cols[:, None, :])
        total = int((rows.sum(axis=1) * cols.sum(axis=1)).sum())
        shares.append(inside / max(total, 1))
    return min(shares)


def _span(flags: np.ndarray) -> np.ndarray:
    """Each row of ``flags`` (bool, (K, N)) filled from its first True to its last."""
    return np.maximum.accumulate(flags, axis=1) & np.maximum.accumulate(flags[:, ::-1], axis=1)[:, ::-1]


def _tag_facts(arr: np.ndarray, nodata: float | None, ignore_value: int | None, labels: np.ndarray,
               labelled: np.ndarray, path: str, facts: UnlabelledFacts) -> None:
    """Note a file whose nodata tag, not ``ignore_value``, leaves out pixels of a value that looks like one of its
    classes: next to (or between) the class values it keeps (``labels`` where ``labelled``; nodata 0 on a 0 / 1
    mask)."""
    if nodata is None or not math.isfinite(nodata) or nodata == ignore_value or nodata != round(nodata) or nodata < 0:
        return  # (a negative value is never a class)
    kept = labels[labelled]  # (a copy: taken only for a tag that may be a class)
    kept = kept if ignore_value is None else kept[kept != ignore_value]
    if kept.size == 0 or not kept.min() - 1 <= nodata <= kept.max() + 1:
        return
    count = int(np.count_nonzero(is_fill(arr, nodata)))
    if count and path not in {f[0] for f in facts.tag_like_class}:
        facts.tag_like_class.append((path, count, float(nodata)))


def _unlabelled_mark(arr: np.ndarray, nodata: float | None, valid: np.ndarray | None) -> str | None:
    """How a label file marks its unlabelled pixels itself, in words (None: it does not): a finite nodata value,
    NaN (a NaN nodata tag, or NaNs in a float file: rasterised points often fill the rest with NaN), or a GDAL mask
    that hides some pixels."""
    if nodata is not None and math.isfinite(nodata):
        return f"its nodata value {nodata:g}"
    if arr.dtype.kind == "f" and (nodata is not None or not np.isfinite(arr).all()):
        return "NaN"
    if valid is not None and not valid.all():
        return "its GDAL mask"
    return None


def check_label_affine(path: str | Path, affine: np.ndarray) -> None:
    """A DataError naming the label volume ``path`` when its ``affine`` maps no 3D grid (reorienting: a traceback)."""
    if not maps_a_grid(affine):
        raise DataError(f"label volume '{path}' {AFFINE_PROBLEM}, or leave its image out with data.exclude.")


def read_label(path: str | Path, kind: str, ignore_value: int | None = 0, nodata: float | None = None,
               spacing: Sequence[float] | None = None, window: tuple[int, int, int, int] | None = None,
               remap: dict | None = None, warn_coverage: bool = False, facts: UnlabelledFacts | None = None,
               use_file_nodata: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A label file as (labels, bool labelled): (H, W) for rasters, (D, H, W) RAS-oriented for volumes; int32 labels
    (int64 from a 32-bit unsigned or 64-bit integer file, or a float one), half of int64's memory on a large scene.
    ``warn_coverage``: say when ``spacing`` makes a grid that passes over labelled voxels (users' labels);
    ``facts``: gather what the file suggests about its unlabelled pixels (:class:`UnlabelledFacts`).

    ``remap`` ({old: new}) merges or renumbers classes first (e.g. BraTS whole tumour: {2: 1, 3: 1, 4: 1}).
    Unlabelled = NaN, the file's nodata (or ``nodata``), a pixel its GDAL mask (internal or ``.msk``) hides, or
    ``ignore_value`` (after ``remap``, so a class mapped to
    it is left out); those positions hold ``ignore_value`` (-1 if None). Float labels are rounded, with a warning
    when some are not whole numbers (more than 1 % of them: a DataError, the file is no label map). Volumes follow
    the volume reader: closest-canonical RAS, and with ``spacing`` the same resampled grid (nearest neighbour).
    ``window`` = (row, col, h, w) reads part of a raster. ``use_file_nodata`` False: a raster's nodata tag marks
    nothing (``labels.use_nodata``).
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
                    file_nodata = src.nodata if use_file_nodata else None
                    valid = src.read_masks(1, window=win) > 0 if has_dataset_mask(src) else None
            except rasterio.errors.RasterioIOError as err:
                raise DataError(f"cannot read label raster '{path}' ({innermost_message(err)}): its pixels are "
                                "truncated or corrupt; copy or export it again.") from None
        return _to_labels(arr, nodata if nodata is not None else file_nodata, ignore_value, path, remap, valid, facts)
    import nibabel as nib

    try:
        img = nib.load(path)
        check_label_affine(path, mm_affine(img))
        img = nib.as_closest_canonical(img)
        arr = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read label volume '{path}' ({err}); is it a NIfTI file?") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"label volume '{path}' has shape {list(arr.shape)}; a label volume is 3D (one class id "
                        "per voxel).")
    labels, labelled = _to_labels(arr, nodata, ignore_value, path, remap, facts=facts)  # (D, H, W) RAS
    if spacing is not None:
        new = resampled_shape(labels.shape, voxel_mm(mm_affine(img)), spacing)  # the volume reader's grid
        idx = nearest_index(labels.shape, new)  # nearest on the reader's align-corners grid
        reached = np.zeros(labels.shape, bool)
        reached[idx] = True
        missed, total = int(np.count_nonzero(labelled & ~reached)), int(np.count_nonzero(labelled))
        mm = " x ".join(f"{v:.3g}" for v in voxel_mm(mm_affine(img)))
        if missed and warn_coverage and (tuple(spacing), mm) not in _SAID_COVERAGE:  # a grid coarser than the labels:
            _SAID_COVERAGE.add((tuple(spacing), mm))  # nearest neighbour skips voxels (said once per voxel size)
            log.warning(f"warning: on the data.spacing {list(spacing)} mm grid, {total - missed} of the {total} "
                        f"labelled voxels of '{path}' are read (nearest neighbour); the others neither train nor "
                        f"test, and so in the other label files of {mm} mm voxels. A data.spacing as fine as the "
                        "labels' reads them all.")
        labels, labelled = labels[idx], labelled[idx]
    return labels, labelled
