"""Whole-scene prediction: sliding windows with blending, streamed strip by strip to a GeoTIFF (2D), or MONAI's
sliding-window inference on a whole volume mapped back onto the input NIfTI's own grid (3D).

Rasters are never held whole: windows are processed one row of windows at a time. The input strip (C, wh, W),
the blended-probability strip (K, wh, W) and its weight strip (wh, W) cover rows [r_i, r_i + wh) of window row i;
once row i is done, rows [r_i, r_{i+1}) are final (no later window reaches them), so they are normalised, written
with a windowed write and the strips shift up. Softmax probabilities are blended, never logits.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from functools import reduce
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from geomed_ssl.data.stats import BandStats, check_bands, normalize
from geomed_ssl.downstream.writers import PROBA_SCALE, GeoTiffWriter, class_lookup, proba_path, write_nifti_like
from geomed_ssl.errors import ConfigError, DataError

ModelFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, *S) float -> logits (B, K, *S)
RASTER_BLENDS = ("gaussian", "linear", "constant")
VOLUME_BLENDS = ("gaussian", "constant")
GAUSSIAN_SIGMA = 0.125  # sigma as a fraction of the window side (nnU-Net / MONAI default)
MIN_WEIGHT = 1e-3  # blending weights are floored at this fraction of the centre weight
RASTER_EXT, VOLUME_EXT = (".tif", ".tiff"), (".nii.gz", ".nii")


# -- geometry ---------------------------------------------------------------------------------------------------
def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Strictly increasing window origins along one axis; the last window is shifted back to end at the edge.

    A window larger than the axis gives one origin (0); the window is then padded with nodata.
    """
    if size <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    return list(range(0, size - window, stride)) + [size - window]


def blend_weights(window: Sequence[int], blend: str) -> np.ndarray:
    """Per-pixel blending weight of one window, max 1, floored at ``MIN_WEIGHT``: float32 ``window`` shape.

    gaussian: sigma = 0.125 * side per axis; linear: a tent falling to the edges; constant: ones.
    """
    axes = []
    for n in window:
        i = np.arange(n, dtype=np.float64)
        if blend == "gaussian":
            w = np.exp(-0.5 * ((i - (n - 1) / 2) / (GAUSSIAN_SIGMA * n)) ** 2)
        elif blend == "linear":
            w = np.minimum(i + 1, n - i) / math.ceil(n / 2)
        else:
            w = np.ones(n)
        axes.append(w)
    out = reduce(np.multiply.outer, axes)
    out /= out.max()
    return np.maximum(out, MIN_WEIGHT).astype(np.float32)


# -- checks -----------------------------------------------------------------------------------------------------
def _check_request(path: Path, out_path: Path, overlap: float, blend: str, blends: Sequence[str], batch_size: int,
                   num_classes: int, probabilities: bool | str) -> str | None:
    """Validate the arguments both predictors share; returns the probability output kind (None: no proba file)."""
    if _same_file(path, out_path):
        raise DataError(f"the output '{out_path}' would overwrite the input; choose another output path.")
    if not 0.0 <= float(overlap) < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}.")
    if blend not in blends:
        raise ConfigError(f"blend must be one of {', '.join(blends)}, got '{blend}'.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}.")
    return _proba_kind(probabilities)


def _window(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(out) != ndim or any(v < 1 for v in out):
        raise ConfigError(f"{name} must be a positive int or {ndim} positive ints, got {value!r}.")
    return out


def _proba_kind(probabilities: bool | str) -> str | None:
    if probabilities in (False, None):
        return None
    kind = "float32" if probabilities is True else str(probabilities)
    if kind not in ("float32", "uint8"):
        raise ConfigError(f"probabilities must be False, True/'float32' or 'uint8', got {probabilities!r}.")
    return kind


def _as_model(model_fn: ModelFn, device: str | torch.device) -> ModelFn:
    if isinstance(model_fn, torch.nn.Module):
        model_fn = model_fn.to(device).eval()
    return model_fn


def _softmax(model_fn: ModelFn, batch: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Run the model on (B, C, *S) and return float32 softmax probabilities (B, K, *S)."""
    logits = model_fn(batch)
    if not isinstance(logits, torch.Tensor) or logits.ndim != batch.ndim or logits.shape[0] != batch.shape[0] \
            or logits.shape[1] != num_classes or logits.shape[2:] != batch.shape[2:]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"the model returned {got} for a batch of {tuple(batch.shape)}; expected logits "
                          f"(B, {num_classes}, {', '.join(map(str, batch.shape[2:]))}) with num_classes={num_classes}.")
    return torch.softmax(logits.float(), dim=1)


def _same_file(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()


# -- rasters ----------------------------------------------------------------------------------------------------
def predict_raster(
    model_fn: ModelFn,
    path: str | Path,
    out_path: str | Path,
    stats: BandStats,
    band_names: Sequence[str] | None = None,
    window: int | Sequence[int] = (256, 256),
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 8,
    *,
    num_classes: int,
    nodata: float | None = None,
    probabilities: bool | str = False,
    device: str | torch.device = "cpu",
    data_cfg: Any = None,
    class_values: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Predict a GeoTIFF window by window into a class-map GeoTIFF on the input's grid; returns a summary dict.

    ``band_names`` are the file's bands (default: resolved as the catalog does, from descriptions or ``data_cfg``);
    they must equal ``stats.band_names``. ``nodata``: explicit, else ``data_cfg.nodata``, else the file's.
    Output: ``class_values[argmax]`` (default: the class index) as uint8 with nodata 255 where the input is
    nodata (uint16 / 65535 when a value is >= 255); with ``probabilities`` ('float32'/True or 'uint8' =
    round(p*254), nodata NaN / 255) also ``*_proba.tif``, one band per class.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    from geomed_ssl.data.bands import resolve_bands

    t0 = time.perf_counter()
    path, out_path = Path(path), Path(out_path)
    win = _window(window, 2, "window")
    pkind = _check_request(path, out_path, overlap, blend, RASTER_BLENDS, batch_size, num_classes, probabilities)
    model = _as_model(model_fn, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(path)
        except Exception as err:
            raise DataError(f"cannot open raster '{path}': {err}. Check it exists and is a GeoTIFF.") from None
        with src:
            names = list(band_names) if band_names is not None else \
                resolve_bands(src.count, src.descriptions, None, data_cfg, str(path))[0]
            if len(names) != src.count:
                raise DataError(f"'{path}' has {src.count} bands but {len(names)} band names were given.")
            check_bands(stats, names, str(path))
            if nodata is None:
                nodata = getattr(data_cfg, "nodata", None)
            if nodata is None:
                nodata = src.nodata
            nd = None if nodata is None or not math.isfinite(float(nodata)) else float(nodata)
            H, W = src.height, src.width
            block_rows = src.block_shapes[0][0] if src.block_shapes else 1
            row_bytes = src.count * W * np.dtype(src.dtypes[0]).itemsize
            # Two block rows of decoded tiles stay cached, so a tile row shared by two strips is decoded once.
            # (rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64, which takes BYTES, not MB.)
            cache_bytes = max(64 << 20, 2 * min(block_rows, H) * row_bytes + (16 << 20))
            lut, lnodata = class_lookup(int(num_classes), class_values)
            like = {"height": H, "width": W, "crs": src.crs, "transform": src.transform}
            outputs = [GeoTiffWriter(out_path, like, 1, lut.dtype, lnodata, descriptions=["class"])]
            ppath = proba_path(out_path) if pkind else None
            try:
                if pkind:
                    outputs.append(GeoTiffWriter(
                        ppath, like, num_classes, pkind, math.nan if pkind == "float32" else 255,
                        descriptions=[f"p_class_{k}" for k in range(num_classes)],
                        scales=[1.0 / PROBA_SCALE] * num_classes if pkind == "uint8" else None))
                with rasterio.Env(GDAL_CACHEMAX=int(cache_bytes)):
                    read = lambda a, b: src.read(window=Window(0, a, W, b - a))  # noqa: E731  (C, b-a, W)
                    info = _stream_raster(read, (H, W), src.count, model, stats, nd, win, overlap, blend,
                                          int(batch_size), lut, lnodata, outputs, pkind, device)
            except BaseException:
                for w in outputs:
                    w.abort()
                raise
            for w in outputs:
                w.close()
    seconds = time.perf_counter() - t0
    return {
        "input": str(path), "output": str(out_path), "proba_output": str(ppath) if ppath else None,
        "kind": "raster", "shape": [H, W], "band_names": names, "num_classes": int(num_classes),
        "window": list(win), "overlap": float(overlap), "blend": blend, "nodata": nd, "nodata_label": lnodata,
        **info, "seconds": round(seconds, 3), "pixels_per_s": round(H * W / max(seconds, 1e-9), 1),
    }


def _stream_raster(read: Callable[[int, int], np.ndarray], shape: tuple[int, int], bands: int, model: ModelFn,
                   stats: BandStats, nodata: float | None, win: tuple[int, ...], overlap: float, blend: str,
                   batch_size: int, lut: np.ndarray, lnodata: int, outputs: list[GeoTiffWriter], pkind: str | None,
                   device: str | torch.device) -> dict[str, Any]:
    """The strip loop of ``predict_raster`` (see the module docstring). ``read(a, b)`` -> rows [a, b), (C, b-a, W)."""
    H, W = shape
    wh, ww = win
    K = len(lut)
    rows, cols = window_starts(H, wh, overlap), window_starts(W, ww, overlap)
    Wp = max(W, ww)  # a window wider than the image is padded on the right
    weight = torch.from_numpy(blend_weights(win, blend)).to(device)  # (wh, ww)
    strip = np.zeros((bands, wh, Wp), np.float32)  # normalised input rows [top, top + wh)
    valid = np.zeros((wh, Wp), bool)
    acc = torch.zeros((K, wh, Wp), dtype=torch.float32, device=device)  # weighted probability sums
    wsum = torch.zeros((wh, Wp), dtype=torch.float32, device=device)  # weight sums
    counts = np.zeros(K, np.int64)
    top = loaded = 0
    max_read_rows = n_windows = 0
    for i, r in enumerate(rows):
        shift = r - top
        if shift:  # rows above r are written: move the strips up (shift <= stride <= wh)
            keep = wh - shift
            strip[:, :keep] = strip[:, shift:]
            strip[:, keep:] = 0.0
            valid[:keep] = valid[shift:]
            valid[keep:] = False
            acc[:, :keep] = acc[:, shift:].clone()
            acc[:, keep:] = 0.0
            wsum[:keep] = wsum[shift:].clone()
            wsum[keep:] = 0.0
            top = r
        a, b = max(loaded, r), min(r + wh, H)
        if b > a:  # only rows not read for the previous strip
            x, v = normalize(read(a, b), stats, nodata)  # (C, b-a, W), (b-a, W)
            strip[:, a - r : b - r, :W] = x
            valid[a - r : b - r, :W] = v
            loaded, max_read_rows = b, max(max_read_rows, b - a)
            del x, v
        for j in range(0, len(cols), batch_size):
            chunk = cols[j : j + batch_size]
            batch = torch.from_numpy(np.stack([strip[:, :, c : c + ww] for c in chunk])).to(device)  # (B,C,wh,ww)
            with torch.inference_mode():
                probs = _softmax(model, batch, K) * weight  # (B, K, wh, ww)
                for p, c in zip(probs, chunk):
                    acc[:, :, c : c + ww] += p
                    wsum[:, c : c + ww] += weight
            n_windows += len(chunk)
        n = (rows[i + 1] if i + 1 < len(rows) else H) - r  # rows [r, r + n) are final
        with torch.inference_mode():
            proba = acc[:, :n, :W] / wsum[:n, :W]  # (K, n, W)
            index = proba.argmax(dim=0).cpu().numpy()  # (n, W) int64
        ok = valid[:n, :W]
        labels = lut[index]  # (n, W) stored label values
        labels[~ok] = lnodata
        outputs[0].write(labels, (r, 0, n, W))
        counts += np.bincount(index[ok], minlength=K)[:K]
        if pkind:
            p = proba.cpu().numpy()  # (K, n, W) float32
            if pkind == "uint8":
                p = np.rint(p * PROBA_SCALE).astype(np.uint8)
                p[:, ~ok] = 255
            else:
                p[:, ~ok] = np.nan
            outputs[1].write(p, (r, 0, n, W))
    strip_bytes = strip.nbytes + valid.nbytes + (acc.numel() + wsum.numel()) * 4
    return {"windows": n_windows, "window_rows": len(rows), "window_cols": len(cols),
            "valid_pixels": int(counts.sum()), "class_counts": counts.tolist(), "max_buffer_pixels": wh * Wp,
            "max_read_pixels": max_read_rows * W, "strip_bytes": int(strip_bytes),
            "writer_buffer_bytes": int(sum(w.buffer_bytes for w in outputs))}


# -- volumes ----------------------------------------------------------------------------------------------------
def predict_volume(
    model_fn: ModelFn,
    path: str | Path,
    out_path: str | Path,
    stats: BandStats,
    band_names: Sequence[str] | None = None,
    roi_size: int | Sequence[int] = 96,
    data_cfg: Any = None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    *,
    num_classes: int,
    probabilities: bool | str = False,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    class_values: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Predict a NIfTI volume (or a folder of ``data.channels`` files) into a label NIfTI on the input's own grid.

    The volume is read as in training (``VolumeReader``: RAS, ``data.spacing`` resampling, intensity scaling),
    normalised with ``stats`` and predicted with MONAI ``sliding_window_inference`` (blending softmax
    probabilities). The probabilities are resampled back (trilinear) if the reader resampled, reoriented to the
    file's axis order, then argmax'd, so the output has the input's shape and affine exactly. Labels are
    ``class_values[argmax]`` (default the index), uint8 (uint16 when a value is >= 255); voxels invalid in the
    input get 255 (65535). ``probabilities`` adds
    ``*_proba.nii.gz`` (X, Y, Z, K): float32, or uint8 = round(p*254).
    """
    from monai.inferers import sliding_window_inference
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.catalog import reoriented_shape, scan
    from geomed_ssl.data.readers import VolumeReader

    t0 = time.perf_counter()
    path, out_path = Path(path), Path(out_path)
    roi = _window(roi_size, 3, "roi_size")
    pkind = _check_request(path, out_path, overlap, blend, VOLUME_BLENDS, batch_size, num_classes, probabilities)
    cfg = dataclasses.replace(data_cfg if data_cfg is not None else DataConfig(), kind="volume", patch_size=1)
    if path.is_file():  # the named file is predicted whatever data.include / data.exclude say
        cfg = dataclasses.replace(cfg, include=["**/*"], exclude=[], channels=None)
    catalog = scan(path, cfg, strict=True)
    if len(catalog.records) != 1:
        raise DataError(f"'{path}' holds {len(catalog.records)} volumes; predict_volume takes one file "
                        "(or one folder of data.channels files). Use predict_files for many.")
    record = catalog.records[0]
    names = list(band_names) if band_names is not None else list(record.band_names)
    check_bands(stats, names, record.path)
    model = _as_model(model_fn, device)

    vol, _ = VolumeReader(cfg, max_cached=1).load(record)  # (C, X, Y, Z) RAS, resampled, intensity-scaled
    x, valid = normalize(vol, stats, cfg.nodata)  # (C, X, Y, Z) float32, (X, Y, Z)
    del vol
    model_grid = tuple(x.shape[1:])
    with torch.inference_mode():
        probs = sliding_window_inference(
            torch.from_numpy(x)[None], roi, int(batch_size), lambda b: _softmax(model, b, int(num_classes)),
            overlap=float(overlap), mode=blend, sw_device=device, device="cpu")[0].float()  # (K, X, Y, Z)
        del x
        canon = tuple(reoriented_shape(record))  # RAS grid before resampling
        resampled = model_grid != canon
        stack = torch.cat([probs, torch.from_numpy(valid.astype(np.float32))[None]], 0)  # (K+1, X, Y, Z)
        if resampled:  # undo resample_to_spacing: same first/last voxel centres (align_corners)
            stack = torch.nn.functional.interpolate(stack[None], size=canon, mode="trilinear", align_corners=True)[0]
        stack = stack.permute(1, 2, 3, 0).numpy()  # (X, Y, Z, K+1) RAS
    import nibabel as nib

    ref = nib.load(record.path)
    to_file = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(ref.affine))
    stack = apply_orientation(stack, to_file)  # (x, y, z, K+1) in the file's voxel order
    if stack.shape[:3] != tuple(ref.shape[:3]):
        raise DataError(f"internal grid mismatch for '{record.path}': prediction {stack.shape[:3]} vs file "
                        f"{tuple(ref.shape[:3])}; please report this.")
    proba, ok = stack[..., :-1], stack[..., -1] >= 0.5
    lut, lnodata = class_lookup(int(num_classes), class_values)
    index = proba.argmax(axis=-1)  # (x, y, z)
    labels = lut[index]
    labels[~ok] = lnodata
    write_nifti_like(labels, record.path, out_path)
    ppath = None
    if pkind:
        ppath = proba_path(out_path)
        p = np.ascontiguousarray(proba, dtype=np.float32)
        p = np.rint(p * PROBA_SCALE).astype(np.uint8) if pkind == "uint8" else p
        p[~ok] = 255 if pkind == "uint8" else np.nan
        write_nifti_like(p, record.path, ppath)
    counts = np.bincount(index[ok], minlength=num_classes)[:num_classes]
    seconds = time.perf_counter() - t0
    return {
        "input": record.path, "output": str(out_path), "proba_output": str(ppath) if ppath else None,
        "kind": "volume", "shape": list(ref.shape[:3]), "model_grid": list(model_grid), "resampled": resampled,
        "orientation": "".join(nib.aff2axcodes(ref.affine)), "band_names": names, "num_classes": int(num_classes),
        "roi_size": list(roi), "overlap": float(overlap), "blend": blend, "nodata_label": lnodata,
        "valid_voxels": int(counts.sum()), "class_counts": counts.tolist(), "seconds": round(seconds, 3),
    }


# -- many files -------------------------------------------------------------------------------------------------
def _kind_and_stem(path: Path, data_cfg: Any) -> tuple[str, str]:
    name = path.name
    low = name.lower()
    for ext in VOLUME_EXT:
        if low.endswith(ext):
            return "volume", name[: -len(ext)]
    for ext in RASTER_EXT:
        if low.endswith(ext):
            return "raster", name[: -len(ext)]
    if path.is_dir() and getattr(data_cfg, "channels", None):  # one folder of stacked channel files
        return getattr(data_cfg, "kind", "volume"), name
    raise DataError(f"'{path}' is neither a GeoTIFF (.tif/.tiff) nor a NIfTI (.nii/.nii.gz); nothing to predict.")


def list_inputs(inputs: str | Path | Sequence[str | Path], data_cfg: Any = None) -> list[Path]:
    """Files to predict: the given files, or every GeoTIFF/NIfTI under a folder (previous ``*_pred`` outputs
    skipped); a folder with ``data.channels`` set is one stacked input."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise DataError(f"input '{item}' does not exist.")
        if item.is_dir() and not getattr(data_cfg, "channels", None):
            found = sorted(p for p in item.rglob("*") if p.is_file()
                           and p.name.lower().endswith((*RASTER_EXT, *VOLUME_EXT))
                           and "_pred" not in p.name and not p.name.startswith("."))
            if not found:
                raise DataError(f"no GeoTIFF or NIfTI files under '{item}'.")
            out += found
        else:
            out.append(item)
    return out


def predict_files(
    model_fn: ModelFn,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    stats: BandStats,
    *,
    num_classes: int,
    window: int | Sequence[int],
    data_cfg: Any = None,
    band_names: Sequence[str] | None = None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 8,
    probabilities: bool | str = False,
    device: str | torch.device = "cpu",
    class_values: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Predict every input into ``out_dir/<stem>_pred.tif`` or ``<stem>_pred.nii.gz``; returns one summary each.

    ``window`` is the raster window (2 ints) or the volume ROI (3 ints; an int serves both).
    """
    paths = list_inputs(inputs, data_cfg)
    out_dir = Path(out_dir)
    planned: dict[Path, Path] = {}
    for p in paths:
        kind, stem = _kind_and_stem(p, data_cfg)
        out = out_dir / f"{stem}_pred{'.tif' if kind == 'raster' else '.nii.gz'}"
        if out in planned.values():
            other = next(k for k, v in planned.items() if v == out)
            raise DataError(f"'{p}' and '{other}' would both be written to '{out}'; predict them into separate "
                            "output folders.")
        planned[p] = out
    model = _as_model(model_fn, device)
    summaries = []
    for p, out in planned.items():
        kind, _ = _kind_and_stem(p, data_cfg)
        if kind == "raster":
            summaries.append(predict_raster(
                model, p, out, stats, band_names, window, overlap, blend, batch_size, num_classes=num_classes,
                probabilities=probabilities, device=device, data_cfg=data_cfg, class_values=class_values))
        else:
            summaries.append(predict_volume(
                model, p, out, stats, band_names, window, data_cfg, overlap, blend, num_classes=num_classes,
                probabilities=probabilities, batch_size=batch_size, device=device, class_values=class_values))
    return summaries
