"""Volume prediction: MONAI sliding-window inference on a whole NIfTI volume, mapped back onto the input's own grid."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

from geomed_ssl.bands.conform import conform_record, note_band_order
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.geo.validity import valid_mask
from geomed_ssl.windows.tiling import DEFAULT_OVERLAP, inside_starts
from geomed_ssl.errors import DataError
from geomed_ssl.files.cases import is_case_file
from geomed_ssl.inference.slabs import Planes, resampled_planes, window_planes
from geomed_ssl.inference.sliding import (ModelFn, as_model, as_window, check_request, blends_logits, window_scores,
                                          warn_if_nothing_predicted)
from geomed_ssl.inference.legend import class_lookup, class_record
from geomed_ssl.inference.writers import PROBA_SCALE, nifti_like, proba_path, save_nifti
from geomed_ssl.outfiles import atomic_paths
from geomed_ssl.train.console import WorkProgress

VOLUME_BLENDS = ("gaussian", "constant")


def predict_volume(model_fn: ModelFn, path: str | Path, out_path: str | Path, stats: BandStats,
                   band_names: Sequence[str] | None = None, roi_size: int | Sequence[int] = 96, data_cfg: Any = None,
                   overlap: float = DEFAULT_OVERLAP, blend: str = "gaussian", *, num_classes: int,
                   probabilities: bool | str = False, batch_size: int = 4, device: str | torch.device = "cpu",
                   class_values: Sequence[int] | None = None, names_by_position: str = "warn",
                   made_by: str | None = None, run: str | None = None, class_names: Sequence[str] | None = None,
                   commit_lock: Callable[[], ContextManager[Any]] | None = None) -> dict[str, Any]:
    """Predict a NIfTI volume (or a folder of ``data.channels`` files) into a label NIfTI on the input's own grid.

    The volume is read as in training (``VolumeReader``: RAS, ``data.spacing`` resampling, intensity scaling),
    normalised with ``stats`` and predicted with MONAI ``sliding_window_inference``'s windows and weights (blending
    softmax probabilities), streamed plane by plane (:mod:`geomed_ssl.inference.slabs`). The probabilities are
    resampled back (trilinear) if the reader resampled, reoriented to the file's axis order, then argmax'd, so the
    output has the input's shape and affine exactly. The volume's bands (``band_names`` if given, else as the
    catalog names them) are picked and ordered by name for ``stats`` (the one band rule). Labels are
    ``class_values[argmax]`` (default the index), uint8 (uint16 when a value is >= 255); voxels invalid in the
    input get 255 (65535). ``probabilities`` adds
    ``*_proba.nii.gz`` (X, Y, Z, K): float32, or uint8 = round(p*254). The header's ``descrip`` names the model's
    folder ``made_by`` (the end of its path when the 79 characters the field holds are too few); the whole folder,
    ``run``, the toolkit's version and ``class_names`` (as ``GEOMED_SSL_CLASSES``: JSON of label value -> name)
    are kept beside the input's path in a comment extension. ``commit_lock()``
    is held while the outputs are saved and renamed (see ``predict_raster``).
    """
    from geomed_ssl.config import DataConfig

    t0 = time.perf_counter()
    path, out_path = Path(path), Path(out_path)
    roi = as_window(roi_size, 3, "roi_size")
    pkind = check_request(path, out_path, overlap, blend, VOLUME_BLENDS, batch_size, num_classes, probabilities)
    cfg = prediction_config(path, data_cfg if data_cfg is not None else DataConfig())
    record = volume_record(path, cfg, stats, band_names, names_by_position)
    model = as_model(model_fn, device)
    grid = predict_on_file_grid(model, record, cfg, stats, roi, int(batch_size), int(num_classes), float(overlap),
                                blend, device, pkind)
    lut, lnodata = class_lookup(int(num_classes), class_values)
    index = grid.index  # (x, y, z)
    labels = lut[index]
    labels[~grid.ok] = lnodata
    ppath = proba_path(out_path) if pkind else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (commit_lock or contextlib.nullcontext)(), \
            atomic_paths([out_path] + ([ppath] if ppath else [])) as tmps:  # both files appear together, or neither
        source, classes = str(path.resolve()), class_record(lut, class_names)
        save_nifti(nifti_like(labels, record.path, made("geomed-ssl prediction", made_by), "label", source, run,
                              made_by, classes), tmps[0], out_path)
        if ppath:
            save_nifti(nifti_like(proba_array(grid, pkind), record.path, made("geomed-ssl probabilities", made_by),
                                  source=source, run=run, model=made_by, classes=classes), tmps[1], ppath)
    counts = np.bincount(index[grid.ok], minlength=num_classes)[:num_classes]
    warn_if_nothing_predicted(record.path, int(counts.sum()), cfg.nodata, out_path)
    seconds = time.perf_counter() - t0
    return {
        "input": record.path, "output": str(out_path), "proba_output": str(ppath) if ppath else None,
        "kind": "volume", "shape": list(grid.shape), "model_grid": list(grid.model_grid), "resampled": grid.resampled,
        "orientation": grid.orientation, "band_names": list(record.band_names), "num_classes": int(num_classes),
        "roi_size": list(roi), "overlap": float(overlap), "blend": blend, "nodata_label": lnodata,
        "valid_voxels": int(counts.sum()), "class_counts": counts.tolist(), "seconds": round(seconds, 3),
    }


def prediction_config(path: Path, data_cfg: Any) -> Any:
    """``data_cfg`` as prediction reads the volume at ``path``: any size (windows are padded, training's half-window
    rule does not apply) and, for a named file, whatever data.include / data.exclude / data.channels say."""
    cfg = dataclasses.replace(data_cfg, kind="volume", patch_size=1)
    if path.is_file():  # one channel file of several stands for its case (geomed_ssl.files.cases)
        keep = cfg.channels if is_case_file(path, cfg.channels) else None
        cfg = dataclasses.replace(cfg, include=["**/*"], exclude=[], channels=keep)
    return cfg


def volume_record(path: Path, cfg: Any, stats: BandStats, band_names: Sequence[str] | None,
                  names_by_position: str) -> Any:
    """The catalog record of the one volume at ``path`` (a file, or a folder or one case of ``data.channels``
    files), its bands named (``band_names`` if given) and picked and ordered by name for ``stats``."""
    from geomed_ssl.data.catalog import scan

    catalog = scan(path, cfg, strict=True, names_by_position=names_by_position)
    if len(catalog.records) != 1:
        raise DataError(f"'{path}' holds {len(catalog.records)} volumes; predict_volume takes one file "
                        "(or one folder of data.channels files). Use predict_files for many.")
    record = catalog.records[0]
    if band_names is not None:
        if len(band_names) != record.num_bands:
            raise DataError(f"'{path}' has {record.num_bands} channels but {len(band_names)} band names were given.")
        record = dataclasses.replace(record, band_names=list(band_names), band_source="caller")
    conformed = conform_record(record, list(stats.band_names), stats.wavelengths)  # refused before any note
    note_band_order(record.path, list(stats.band_names), list(record.band_names), volume=True,
                    wavelengths=(stats.wavelengths, record.wavelengths))
    return conformed


@dataclasses.dataclass
class FileGridPrediction:
    """A prediction on the file's own voxel grid and axis order: ``index`` (x, y, z) the class position of each voxel
    (argmax of its softmax probabilities), ``ok`` (x, y, z) the voxels valid in the input, ``proba`` (x, y, z, K) the
    probabilities when asked for (float32, or uint8 = round(p*254)); with the grid the model saw and the file's
    orientation."""

    index: np.ndarray
    ok: np.ndarray
    proba: np.ndarray | None
    shape: tuple[int, ...]
    model_grid: tuple[int, ...]
    resampled: bool
    orientation: str


VOLUME_MARGIN = 4  # the window fraction (1/4) the volume is padded by on each side before the sliding window


def volume_margin(roi: Sequence[int]) -> tuple[int, ...]:
    """Voxels of edge padding per axis on each side of a volume: a window's outermost layers are where a decoder's
    convolutions meet their zero padding, and a face of the volume covered only by window edges showed it."""
    return tuple(max(1, int(r) // VOLUME_MARGIN) for r in roi)


def predict_on_file_grid(model: ModelFn, record: Any, cfg: Any, stats: BandStats, roi: tuple[int, ...],
                         batch_size: int, num_classes: int, overlap: float, blend: str,
                         device: str | torch.device, pkind: str | None = None) -> FileGridPrediction:
    """Read the volume as in training, predict it with MONAI's sliding window (blending softmax probabilities), and
    map the probabilities back: resampled to the RAS grid before resampling (trilinear, same first and last voxel
    centres) and reoriented to the file's voxel order. Streamed plane by plane (:mod:`geomed_ssl.inference.slabs`):
    besides the input, what is held whole is a few bytes a voxel (classes, validity) and the probabilities only
    when ``pkind`` asks for them."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    from geomed_ssl.data.catalog import reoriented_shape
    from geomed_ssl.data.readers import VolumeReader

    vol, _ = VolumeReader(cfg, max_cached=1).load(record)  # (C, X, Y, Z) RAS, resampled, intensity-scaled
    x, valid = normalize(vol, stats, cfg.nodata)  # (C, X, Y, Z) float32, (X, Y, Z)
    del vol
    model_grid = tuple(x.shape[1:])
    canon = tuple(reoriented_shape(record))  # RAS grid before resampling
    resampled = model_grid != canon
    margin = volume_margin(roi)
    index = np.zeros(canon, np.uint8 if num_classes <= 256 else np.int32)
    inside = valid if not resampled else np.zeros(canon, bool)
    ref = nib.load(record.path)
    ras, own = axcodes2ornt(("R", "A", "S")), io_orientation(ref.affine)
    to_file = ornt_transform(ras, own)
    proba = proba_ras = None
    if pkind:  # kept in the file's voxel order (the array written, never copied) and filled through a RAS view
        proba = np.zeros(tuple(ref.shape[:3]) + (num_classes,), np.uint8 if pkind == "uint8" else np.float32)
        proba_ras = apply_orientation(proba, ornt_transform(own, ras))
    with torch.inference_mode():
        padded = torch.nn.functional.pad(torch.from_numpy(x)[None], [m for m in reversed(margin) for _ in (0, 1)],
                                         mode="replicate")[0]  # (C, X + 2mx, ...): no face of the volume is a
        del x  # window's edge, where a decoder's zero padding shows (tumour on the outermost layer, in the air)
        bar = WorkProgress(window_count(tuple(padded.shape[1:]), roi, overlap), "predicting")

        def scores(batch: torch.Tensor) -> torch.Tensor:
            bar.update(int(batch.shape[0]))
            return window_scores(model, batch, num_classes)

        planes = window_planes(padded, roi, overlap, blend, batch_size, scores, device)
        planes = _probabilities(planes, margin, model_grid, blends_logits(model), valid if resampled else None)
        if resampled:  # undo resample_to_spacing: same first/last voxel centres (align_corners), the validity with
            planes = resampled_planes(planes, model_grid[0], canon)  # the classes as one more channel
        for a, block in planes:
            probs = block[:num_classes].permute(1, 2, 3, 0).numpy()  # (n, Y, Z, K) RAS
            index[a:a + len(probs)] = class_argmax(probs)
            if resampled:
                inside[a:a + len(probs)] = block[num_classes].numpy() >= 0.5
            if proba_ras is not None:
                proba_ras[a:a + len(probs)] = np.rint(probs * PROBA_SCALE) if pkind == "uint8" else probs
        bar.close()
        del padded
    index, ok = apply_orientation(index, to_file), apply_orientation(inside, to_file)  # the file's voxel order
    if index.shape != tuple(ref.shape[:3]):
        raise DataError(f"internal grid mismatch for '{record.path}': prediction {index.shape} vs file "
                        f"{tuple(ref.shape[:3])}; please report this.")
    if resampled:  # the validity went to the model's grid and back: a voxel without data on the file's stays out
        ok = ok & file_valid(record, cfg.nodata)
    return FileGridPrediction(index, ok, proba, tuple(ref.shape[:3]), model_grid, resampled,
                              "".join(nib.aff2axcodes(ref.affine)))


def _probabilities(planes: Planes, margin: Sequence[int], grid: Sequence[int], logits: bool,
                   valid: np.ndarray | None) -> Planes:
    """The blended scores' planes inside the margin (cropped to ``grid``) as softmax probabilities (taken here when
    windows blended ``logits``), with ``valid``'s planes (as 0 / 1) as one more channel when given."""
    for a, block in planes:
        lo, hi = max(a, margin[0]), min(a + block.shape[1], margin[0] + grid[0])
        if hi <= lo:
            continue
        block = block[:, lo - a:hi - a, margin[1]:margin[1] + grid[1], margin[2]:margin[2] + grid[2]]
        if logits:
            block = torch.softmax(block, dim=0)
        if valid is not None:
            block = torch.cat([block, torch.from_numpy(valid[lo - margin[0]:hi - margin[0]])[None].float()])
        yield lo - margin[0], block


def class_argmax(proba: np.ndarray) -> np.ndarray:
    """``proba.argmax(axis=-1)`` of an (x, y, z, K) view whose classes lie apart in memory (one volume each), taken
    class by class: numpy's argmax first copies the whole view to make the class axis contiguous, 4 K bytes a voxel
    more (16 classes on a 512x512x400 CT: 6.7 GB), and returns int64. Ties go to the first class, as argmax's do."""
    index = np.zeros(proba.shape[:-1], np.uint8 if proba.shape[-1] <= 256 else np.int32)
    best = np.array(proba[..., 0], dtype=np.float32)
    for k in range(1, proba.shape[-1]):
        better = proba[..., k] > best
        np.copyto(best, proba[..., k], where=better)
        index[better] = k
    return index


def file_valid(record: Any, nodata: float | None) -> np.ndarray:
    """(x, y, z) the voxels of the file's own grid (its voxel order) where every channel of every file of the
    record holds data (finite, not all ``nodata``)."""
    import nibabel as nib

    ok = None
    for path in record.paths:
        arr = np.asanyarray(nib.load(path).dataobj)
        arr = arr.reshape(arr.shape[:3] + (-1,))  # (x, y, z, C)
        valid = valid_mask(np.moveaxis(arr, -1, 0), nodata)
        ok = valid if ok is None else ok & valid
    return ok


def proba_array(grid: FileGridPrediction, pkind: str) -> np.ndarray:
    """The ``*_proba.nii.gz`` array (x, y, z, K) on the reference's grid: float32 (NaN where invalid), or uint8 =
    round(p*254) (255 where invalid), marked in place (``predict_on_file_grid`` filled it in the file's order)."""
    p = grid.proba
    p[~grid.ok] = 255 if pkind == "uint8" else np.nan
    return p


def window_count(size: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """The windows MONAI's ``sliding_window_inference`` runs over a volume of ``size``: :func:`inside_starts` with
    its step, roi x (1 - overlap) rounded down (``overlap_stride`` rounds to nearest), at least 1."""
    return math.prod(len(inside_starts(n, w, max(int(w * (1 - overlap)), 1))) for n, w in zip(size, roi))


def made(what: str, made_by: str | None, room: int = 79) -> str:
    """A NIfTI ``descrip``: ``what`` and, when known, the model folder that made it (the end of its path when the
    field's ``room`` is too small)."""
    if not made_by:
        return what
    text = f"{what} by {made_by}"
    return text if len(text) <= room else f"{what} by ...{str(made_by)[-(room - len(what) - 7):]}"
