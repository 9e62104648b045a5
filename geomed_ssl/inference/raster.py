"""Raster prediction: sliding windows with blending, streamed strip by strip into a GeoTIFF on the input's grid.

Rasters are never held whole: windows are processed one row of windows at a time. The input strip (C, wh, W),
the blended-probability strip (K, wh, W) and its weight strip (wh, W) cover rows [r_i, r_i + wh) of window row i;
once row i is done, rows [r_i, r_{i+1}) are final (no later window reaches them), so they are normalised, written
with a windowed write and the strips shift up. Softmax probabilities are blended, never logits.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from geomed_ssl.config import DataConfig
from geomed_ssl.data.bands import BandInfo, band_order, resolve_band_info
from geomed_ssl.data.conform import report_positional_names
from geomed_ssl.data.stats import BandStats, normalize, valid_mask, warn_far_from_stats
from geomed_ssl.data.tiling import window_starts
from geomed_ssl.inference.sliding import (ModelFn, as_model, as_window, blend_weights, channel_records,
                                          check_request, softmax_probs, warn_if_nothing_predicted)
from geomed_ssl.inference.writers import PROBA_SCALE, GeoTiffWriter, class_lookup, proba_path
from geomed_ssl.errors import DataError

RASTER_BLENDS = ("gaussian", "linear", "constant")


def channel_files(path: Path, data_cfg: Any, names_by_position: str = "warn") -> tuple[list[str], Any]:
    """The file(s) to read for ``path``: itself (and None), or, for a folder with ``data.channels`` set, its
    stacked channel files in channel order and their catalog record (the catalog's grouping, grid checks
    included)."""
    if not path.is_dir():
        return [str(path)], None
    if not getattr(data_cfg, "channels", None):
        raise DataError(f"'{path}' is a folder; predict_raster takes one GeoTIFF, or a folder of single-band files "
                        "with data.channels set.")
    records = channel_records(path, data_cfg, "raster", strict=True, names_by_position=names_by_position)
    if len(records) != 1:
        raise DataError(f"'{path}' holds {len(records)} stacked samples; predict_raster takes one folder of "
                        "data.channels files.")
    return list(records[0].paths), records[0]


def file_bands(src: Any, path: Path, data_cfg: Any, names_by_position: str) -> BandInfo:
    """Band names of an open single GeoTIFF as the catalog resolves them (descriptions, data.band_names, sensor
    profile by position, ...), from its header only; names by position are reported (``names_by_position``)."""
    tags = {b: {**src.tags(b), **src.tags(b, ns="IMAGERY")} for b in range(1, src.count + 1)}
    info = resolve_band_info(src.count, src.descriptions, tags, data_cfg, str(path))
    if info.source == "sensor":
        report_positional_names([str(path)], getattr(data_cfg, "sensor", None), info.names, names_by_position)
    return info


class RangeSample:
    """A strided sample of the valid values of every strip read (about ``per_band`` pixels, spread over the whole
    scene; fewer for many bands), per band, for the range check: p1/p99 need no more."""

    def __init__(self, bands: int, nodata: float | None, shape: tuple[int, int], per_band: int = 50_000):
        self.parts: list[np.ndarray] = []
        self.bands, self.nodata = bands, nodata
        per_band = max(1000, min(per_band, 5_000_000 // max(bands, 1)))  # <= ~20 MB of float32 values
        self.stride = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / per_band)))

    def add(self, strip: np.ndarray) -> None:
        """``strip`` (C, h, W) raw values."""
        sub = strip[:, ::self.stride, ::self.stride]
        self.parts.append(sub[:, valid_mask(sub, self.nodata)].astype(np.float32))  # (C, n)

    def value_range(self) -> list[list[float]]:
        """Per band [nan, p1, p99, nan] (``FileRecord.value_range`` layout)."""
        vals = np.concatenate(self.parts, axis=1) if self.parts else np.zeros((self.bands, 0))
        if vals.shape[1] == 0:
            return [[math.nan] * 4 for _ in range(self.bands)]
        p1, p99 = np.percentile(vals, [1, 99], axis=1)
        return [[math.nan, float(a), float(b), math.nan] for a, b in zip(p1, p99)]


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
    names_by_position: str = "warn",
) -> dict[str, Any]:
    """Predict a GeoTIFF (or a folder of ``data.channels`` single-band files, stacked) window by window into a
    class-map GeoTIFF on the input's grid; returns a summary dict.

    ``band_names`` are the file's bands (default: resolved as the catalog does, from descriptions or ``data_cfg``);
    they are picked and ordered by name for ``stats.band_names`` (the one band rule: extra bands dropped, missing
    ones refused). Names assigned by position are reported as ``names_by_position`` says (warn / error / ignore),
    and values far from ``stats`` are warned about (sampled from the strips read: no extra read).
    ``nodata``: explicit, else ``data_cfg.nodata``, else the file's.
    Output: ``class_values[argmax]`` (default: the class index) as uint8 with nodata 255 where the input is
    nodata (uint16 / 65535 when a value is >= 255); with ``probabilities`` ('float32'/True or 'uint8' =
    round(p*254), nodata NaN / 255) also ``*_proba.tif``, one band per class.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    t0 = time.perf_counter()
    path, out_path = Path(path), Path(out_path)
    win = as_window(window, 2, "window")
    pkind = check_request(path, out_path, overlap, blend, RASTER_BLENDS, batch_size, num_classes, probabilities)
    model = as_model(model_fn, device)
    data_cfg = data_cfg if data_cfg is not None else DataConfig()
    files, stacked = channel_files(path, data_cfg, names_by_position)
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            sources = [stack.enter_context(rasterio.open(f)) for f in files]
        except Exception as err:
            raise DataError(f"cannot open raster '{path}': {err}. Check it exists and is a GeoTIFF.") from None
        src = sources[0]
        count = sum(s.count for s in sources)
        if band_names is not None:
            names, source = list(band_names), "caller"
        elif stacked is not None:
            names, source = list(stacked.band_names), stacked.band_source
        else:
            info = file_bands(src, path, data_cfg, names_by_position)
            names, source = info.names, info.source
        if len(names) != count:
            raise DataError(f"'{path}' has {count} bands but {len(names)} band names were given.")
        order = band_order(stats.band_names, names, str(path), source)
        if nodata is None:
            nodata = getattr(data_cfg, "nodata", None)
        if nodata is None:
            nodata = src.nodata
        nd = None if nodata is None or not math.isfinite(float(nodata)) else float(nodata)
        H, W = src.height, src.width
        block_rows = src.block_shapes[0][0] if src.block_shapes else 1
        row_bytes = count * W * np.dtype(src.dtypes[0]).itemsize
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
            ranges = RangeSample(len(stats.band_names), nd, (H, W))
            with rasterio.Env(GDAL_CACHEMAX=int(cache_bytes)):
                def read(a: int, b: int) -> np.ndarray:  # (C, b-a, W): the model's bands, by name
                    parts = [s.read(window=Window(0, a, W, b - a)) for s in sources]
                    strip = parts[0] if len(parts) == 1 else np.concatenate(parts)
                    strip = strip if order is None else strip[order]
                    ranges.add(strip)
                    return strip

                info = _stream_raster(read, (H, W), len(stats.band_names), model, stats, nd, win, overlap, blend,
                                      int(batch_size), lut, lnodata, outputs, pkind, device)
        except BaseException:
            for w in outputs:
                w.abort()
            raise
        for w in outputs:
            w.close()
    warn_far_from_stats([(str(path), ranges.value_range())], stats)
    warn_if_nothing_predicted(path, info["valid_pixels"], nd, out_path)
    seconds = time.perf_counter() - t0
    return {
        "input": str(path), "output": str(out_path), "proba_output": str(ppath) if ppath else None,
        "kind": "raster", "shape": [H, W], "band_names": list(stats.band_names), "num_classes": int(num_classes),
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
                probs = softmax_probs(model, batch, K) * weight  # (B, K, wh, ww)
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
