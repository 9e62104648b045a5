"""Raster prediction: sliding windows with blending, streamed strip by strip into a GeoTIFF on the input's grid.

Rasters are never held whole: windows are processed one row of windows at a time. The input strip (C, wh, W),
the blended-probability strip (K, wh, W) and its weight strip (wh, W) cover rows [r_i, r_i + wh) of window row i;
once row i is done, rows [r_i, r_{i+1}) are final (no later window reaches them), so they are normalised, written
with a windowed write and the strips shift up. Softmax probabilities are blended, never logits (but for a linear
probe head, whose logits are blended as ``compare`` blends its features: ``sliding.blends_logits``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

from geomed_ssl.config import DataConfig
from geomed_ssl.bands.matching import check_band_wavelengths
from geomed_ssl.bands.names import BandInfo, resolve_band_info
from geomed_ssl.bands.matching import band_order
from geomed_ssl.bands.conform import alpha_note, note_band_order, report_positional_names
from geomed_ssl.geo.gdal_read import data_bands, read_masked
from geomed_ssl.bands.ranges import warn_summaries
from geomed_ssl.data.survey import warn_collars
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.geo.validity import band_gaps, band_percentiles, valid_mask, valid_values
from geomed_ssl.windows.tiling import DEFAULT_OVERLAP, blend_weights, window_starts
from geomed_ssl.errors import DataError
from geomed_ssl.files.cases import is_case_file
from geomed_ssl.inference.sliding import (ModelFn, as_model, as_window, channel_records,
                                          blends_logits, check_request, warn_if_nothing_predicted, window_scores)
from geomed_ssl.inference.legend import category_names, class_colormap, class_lookup, class_record
from geomed_ssl.inference.writers import PROBA_SCALE, GeoTiffWriter, proba_path
from geomed_ssl.outcommands import provenance_tags
from geomed_ssl.train.console import WorkProgress

log = logging.getLogger("geomed_ssl")
RASTER_BLENDS = ("gaussian", "linear", "constant")


def channel_files(path: Path, data_cfg: Any, names_by_position: str = "warn") -> tuple[list[str], Any]:
    """The file(s) to read for ``path``: itself (and None), or, for a folder with ``data.channels`` set (or one
    channel file of a case, ``geomed_ssl.files.cases``), its stacked channel files in channel order and their
    catalog record (the catalog's grouping, grid checks included)."""
    if not path.is_dir() and not is_case_file(path, getattr(data_cfg, "channels", None)):
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
    """Band names of an open single GeoTIFF's bands but its alpha bands (``data_bands``), as the catalog resolves
    them (descriptions, data.band_names, sensor profile by position, ...), from its header only; names by position
    are reported (``names_by_position``)."""
    keep = data_bands([src])
    tags = {n + 1: {**src.tags(b + 1), **src.tags(b + 1, ns="IMAGERY")} for n, b in enumerate(keep)}
    info = resolve_band_info(len(keep), [src.descriptions[b] for b in keep], tags, data_cfg, str(path))
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
        valid, gaps = valid_mask(sub, self.nodata), band_gaps(sub, self.nodata)
        self.parts.append(valid_values(sub, valid, gaps).astype(np.float32))  # (C, n)

    def value_range(self) -> list[list[float]]:
        """Per band [nan, p1, p99, nan] (``FileRecord.value_range`` layout)."""
        vals = np.concatenate(self.parts, axis=1) if self.parts else np.zeros((self.bands, 0))
        if vals.shape[1] == 0:
            return [[math.nan] * 4 for _ in range(self.bands)]
        p1, p99 = band_percentiles(vals, [1, 99])
        return [[math.nan, float(a), float(b), math.nan] for a, b in zip(p1, p99)]


def predict_raster(model_fn: ModelFn, path: str | Path, out_path: str | Path, stats: BandStats,
                   band_names: Sequence[str] | None = None, window: int | Sequence[int] = (256, 256),
                   overlap: float = DEFAULT_OVERLAP, blend: str = "gaussian", batch_size: int = 8, *, num_classes: int,
                   nodata: float | None = None, probabilities: bool | str = False, device: str | torch.device = "cpu",
                   data_cfg: Any = None, class_values: Sequence[int] | None = None,
                   names_by_position: str = "warn", only: np.ndarray | None = None,
                   made_by: str | None = None, run: str | None = None, check_ranges: bool = True,
                   class_colors: Sequence[Sequence[int] | None] | None = None,
                   class_names: Sequence[str] | None = None,
                   commit_lock: Callable[[], ContextManager[Any]] | None = None,
                   overviews: bool = True) -> dict[str, Any]:
    """Predict a GeoTIFF (or a folder of ``data.channels`` single-band files, stacked) window by window into a
    class-map GeoTIFF on the input's grid; returns a summary dict.

    ``band_names`` are the file's bands (default: resolved as the catalog does, from descriptions or ``data_cfg``);
    they are picked and ordered by name for ``stats.band_names`` (the one band rule: extra bands dropped, missing
    ones refused). Names assigned by position are reported as ``names_by_position`` says (warn / error / ignore),
    and values far from ``stats`` are warned about (sampled from the strips read: no extra read).
    ``nodata``: explicit, else ``data_cfg.nodata``, else the file's.
    Output: ``class_values[argmax]`` (default: the class index) as uint8 with nodata 255 where the input is
    nodata (255 a class: the largest free value; uint16 / 65535 when a value is over 255); with ``probabilities``
    ('float32'/True or 'uint8' = round(p*254), nodata NaN / 255) also ``*_proba.tif``, one band per class.
    ``only`` (bool (H, W)): compute only the windows that hold a True pixel, and write nodata where none of them
    reaches: every window holding a True pixel is computed, so there the map is the whole scene's (what
    ``evaluate`` scores its labelled pixels with). ``made_by`` (the model's folder) is written into the outputs'
    metadata as ``GEOMED_SSL_MODEL``, beside ``GEOMED_SSL_VERSION`` (and ``run`` as ``GEOMED_SSL_RUN``;
    ``class_names``, one per class, as ``GEOMED_SSL_CLASSES``: JSON of label value -> name).
    ``commit_lock()`` is held around the renames that give the outputs their final names (``predict_files``: a
    last check, under the folder's lock, that no other job has taken them). ``overviews``: the outputs get internal
    overviews (False: a map only read back whole, as ``evaluate``'s).
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    t0 = time.perf_counter()
    path, out_path = Path(path), Path(out_path)
    win = as_window(window, 2, "window")
    pkind = check_request(path, out_path, overlap, blend, RASTER_BLENDS, batch_size, num_classes, probabilities)
    model = as_model(model_fn, device)
    data_cfg = data_cfg if data_cfg is not None else DataConfig()
    files, stacked = channel_files(path, data_cfg, names_by_position)
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        scene = RasterInput.open(stack, path, files, stacked, stats, band_names, data_cfg, nodata, names_by_position)
        if only is not None and tuple(only.shape) != tuple(scene.shape):
            raise ValueError(f"only: a mask of shape {tuple(only.shape)} for a scene of {tuple(scene.shape)}")
        lut, lnodata = class_lookup(int(num_classes), class_values, tagged=True)
        outputs: list[GeoTiffWriter] = []
        try:
            outputs = open_outputs(out_path, scene.sources[0], [int(v) for v in lut], lut.dtype, lnodata, pkind,
                                   provenance_tags(str(Path(path).resolve()), model=made_by, run=run,
                                                   classes=class_record(lut, class_names)),
                                   class_colormap(lut, class_colors, lnodata), category_names(lut, class_names),
                                   overviews)
            ranges = RangeSample(len(stats.band_names), scene.nodata, scene.shape)
            with rasterio.Env(GDAL_CACHEMAX=scene.cache_bytes()):
                info = _stream_raster(scene.strip_reader(ranges), scene.shape, len(stats.band_names), model, stats,
                                      scene.nodata, win, overlap, blend, int(batch_size), lut, lnodata, outputs, pkind,
                                      device, only)
            for w in outputs:  # every file written and read back whole before either takes its final name
                w.finish()
            with (commit_lock or contextlib.nullcontext)():
                for w in outputs:
                    w.commit()
        except BaseException:
            for w in outputs:
                w.abort()  # a writer already committed has nothing left to abort
            raise
    seconds = time.perf_counter() - t0
    (H, W), ppath = scene.shape, outputs[1].path if pkind else None
    summary = {
        "input": str(path), "output": str(out_path), "proba_output": str(ppath) if ppath else None,
        "kind": "raster", "shape": [H, W], "band_names": list(stats.band_names), "num_classes": int(num_classes),
        "window": list(win), "overlap": float(overlap), "blend": blend, "nodata": scene.nodata,
        "nodata_label": lnodata, **info, "seconds": round(seconds, 3),
        "pixels_per_s": round(H * W / max(seconds, 1e-9), 1), "value_range": ranges.value_range(),
        "value_scaling": scene.scaling, "replaced_nodata": scene.replaced_nodata,
    }
    if check_ranges:  # (False: a fine-tune evaluating the files it trained on, or predict_files, which says it once)
        warn_inputs([summary], stats)
    if only is None or only.any():  # (nothing asked for: nothing predicted, rightly)
        warn_if_nothing_predicted(path, info["valid_pixels"], scene.nodata, out_path)
    return summary


def warn_inputs(summaries: Sequence[dict[str, Any]], stats: BandStats) -> None:
    """What predictions' summaries say about their inputs, one warning each for all of them: scale / offset and
    values far from the statistics (:func:`warn_summaries`), and rasters whose fill collar is not tagged nodata."""
    warn_summaries(summaries, stats)
    warn_collars([(s["input"], s["value_range"]) for s in summaries
                  if s.get("kind") == "raster" and s.get("nodata") is None and s.get("value_range")], "predicted",
                 "give --nodata ")
    replaced = [s for s in summaries if s.get("replaced_nodata") is not None]
    if replaced:
        s = replaced[0]
        own, used = s["replaced_nodata"]
        log.warning("warning: '%s'%s is tagged nodata %g, but the nodata value read with (%g: --nodata, else the "
                    "model's data.nodata) replaces a file's tag, so its %g pixels are predicted as data. Predict "
                    "such files with --nodata %g, or give them the value read with (gdal_calc.py, then gdal_edit.py "
                    "-a_nodata).", s["input"], f" (and {len(replaced) - 1} more file(s))" if len(replaced) > 1 else "",
                    own, used, own, own)


class RasterInput:
    """An open input raster (one GeoTIFF, or the stacked ``data.channels`` files of a folder): its sources, the order
    that picks the model's bands by name (None: as stored), its nodata and shape."""

    def __init__(self, sources: list[Any], order: Any, nodata: float | None):
        self.sources, self.order, self.nodata = sources, order, nodata
        self.shape = (sources[0].height, sources[0].width)
        self.count = sum(s.count for s in sources)
        self.scaling = self._scaling()  # read while the files are open
        self.replaced_nodata: list[float] | None = None  # [the file's nodata tag, the value read in its place]
        self.read_nodata: float | None = nodata  # what a stack's files are read with (geo.gdal_read.read_masked)

    def _scaling(self) -> list[list[float]] | None:
        """[scales, offsets] of the bands read, from the files' GeoTIFF tags (None: untagged, values as stored)."""
        scales = [float(v) for s in self.sources for v in s.scales]
        offsets = [float(v) for s in self.sources for v in s.offsets]
        if self.order is not None:
            scales, offsets = [scales[i] for i in self.order], [offsets[i] for i in self.order]
        if all(v == 1 for v in scales) and all(v == 0 for v in offsets):
            return None
        return [scales, offsets]

    @classmethod
    def open(cls, stack: contextlib.ExitStack, path: Path, files: list[str], stacked: Any, stats: BandStats,
             band_names: Sequence[str] | None, data_cfg: Any, nodata: float | None,
             names_by_position: str) -> RasterInput:
        """Open ``files`` on ``stack``; the bands are named (``band_names``, the stacked record's, or as the catalog
        resolves them) and ordered for ``stats``; ``nodata``: explicit, else ``data_cfg.nodata``, else the file's."""
        import rasterio

        try:
            sources = [stack.enter_context(rasterio.open(f)) for f in files]
        except Exception as err:
            raise DataError(f"cannot open raster '{path}': {err}. Check it exists and is a GeoTIFF.") from None
        src, keep = sources[0], data_bands(sources)  # the stack's bands but alpha bands (GDAL's mask)
        count = len(keep)
        wavelengths = None
        if band_names is not None:
            names, source = list(band_names), "caller"
        elif stacked is not None:
            names, source, wavelengths = list(stacked.band_names), stacked.band_source, stacked.wavelengths
        else:
            info = file_bands(src, path, data_cfg, names_by_position)
            names, source, wavelengths = info.names, info.source, info.wavelengths
        if len(names) != count:
            raise DataError(f"'{path}' has {count} bands but {len(names)} band names were given.")
        try:
            order = band_order(stats.band_names, names, str(path), source, (stats.wavelengths, wavelengths))
        except DataError as err:
            raise DataError(f"{err}{alpha_note(list(files))}") from None
        check_band_wavelengths(stats.band_names, stats.wavelengths, wavelengths, order, str(path))
        if len(keep) < sum(s.count for s in sources):
            order = [keep[i] for i in (range(count) if order is None else order)]
        note_band_order(str(path), list(stats.band_names), names, wavelengths=(stats.wavelengths, wavelengths))
        if nodata is None:
            nodata = getattr(data_cfg, "nodata", None)
        if nodata is None and len(sources) == 1:  # a stack's files each mark their own (records.stack_nodata)
            nodata = src.nodata
        scene = cls(sources, order, None if nodata is None or not math.isfinite(float(nodata)) else float(nodata))
        scene.read_nodata = None if nodata is None else float(nodata)  # NaN kept: set, it replaces a stack's tags
        if nodata is not None:  # a file's tag the model's data.nodata replaces (its pixels then read as data)
            own = next((float(s.nodata) for s in sources if s.nodata is not None and math.isfinite(s.nodata)
                        and s.nodata != float(nodata)), None)
            scene.replaced_nodata = None if own is None else [own, float(nodata)]
        return scene

    def cache_bytes(self) -> int:
        """GDAL's block cache for the strip loop: two block rows of decoded tiles stay cached, so a tile row shared
        by two strips is decoded once. (rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64, which takes BYTES.)"""
        src, (H, W) = self.sources[0], self.shape
        block_rows = src.block_shapes[0][0] if src.block_shapes else 1
        row_bytes = self.count * W * np.dtype(src.dtypes[0]).itemsize
        return int(max(64 << 20, 2 * min(block_rows, H) * row_bytes + (16 << 20)))

    def strip_reader(self, ranges: RangeSample) -> Callable[[int, int], np.ndarray]:
        """``read(a, b)`` -> rows [a, b) of the model's bands, by name: (C, b-a, W); each strip also feeds
        ``ranges``."""
        from rasterio.windows import Window

        W = self.shape[1]
        stacked = len(self.sources) > 1  # each file's missing pixels its own (data.nodata, else its tag)

        def read(a: int, b: int) -> np.ndarray:
            parts = []
            for s in self.sources:
                try:
                    parts.append(read_masked(s, Window(0, a, W, b - a), self.read_nodata, stacked=stacked))
                except MemoryError:
                    raise
                except Exception as err:  # a file truncated or damaged where the scan did not look
                    raise DataError(f"cannot read rows {a}-{b - 1} of '{s.name}': {err}. Part of its pixel data is "
                                    "corrupt or missing (was it changed while being read?): replace the file, or "
                                    "predict the others without it.") from None
            strip = parts[0] if len(parts) == 1 else np.concatenate(parts)
            strip = strip if self.order is None else strip[self.order]
            ranges.add(strip)
            return strip

        return read


def open_outputs(out_path: Path, src: Any, values: Sequence[int], dtype: Any, lnodata: int,
                 pkind: str | None, tags: dict[str, str] | None = None,
                 colormap: dict[int, tuple[int, ...]] | None = None,
                 categories: str | None = None, overviews: bool = True) -> list[GeoTiffWriter]:
    """The class-map writer on ``src``'s grid (``categories``: its GDAL sidecar, :func:`category_names`) and, with
    ``pkind``, the probability writer (one band per class, in the order of ``values``, the label values of the
    classes, and named ``p_class_<value>``), both with ``tags`` (and ``overviews``: the class map's of each block's
    most common class, the probabilities' of their mean); a failure opening the second drops the first."""
    num_classes = len(values)
    like = {"height": src.height, "width": src.width, "crs": src.crs, "transform": src.transform, "gcps": src.gcps,
            "rpcs": src.rpcs, "area_or_point": src.tags().get("AREA_OR_POINT")}
    outputs: list[GeoTiffWriter] = []
    try:
        outputs.append(GeoTiffWriter(out_path, like, 1, dtype, lnodata, descriptions=["class"], tags=tags,
                                     colormap=colormap, sidecar=categories, overviews="mode" if overviews else None))
        if pkind:
            outputs.append(GeoTiffWriter(
                proba_path(out_path), like, num_classes, pkind, math.nan if pkind == "float32" else 255,
                descriptions=[f"p_class_{v}" for v in values],
                scales=[1.0 / PROBA_SCALE] * num_classes if pkind == "uint8" else None, tags=tags,
                overviews="average" if overviews else None))
    except BaseException:
        for w in outputs:
            w.abort()
        raise
    return outputs


class StripBuffers:
    """The window-high strips of the strip loop, covering rows [top, top + wh) padded to ``Wp`` columns: the
    normalised input (C, wh, Wp), its valid mask (wh, Wp), the weighted probability sums (K, wh, Wp) and the
    weight sums (wh, Wp); with ``logits``, the weighted logit sums instead."""

    def __init__(self, bands: int, num_classes: int, wh: int, Wp: int, device: str | torch.device,
                 logits: bool = False):
        self.logits = logits  # the sums are of logits (blends_logits): softmax after blending
        self.strip = np.zeros((bands, wh, Wp), np.float32)
        self.valid = np.zeros((wh, Wp), bool)
        self.acc = torch.zeros((num_classes, wh, Wp), dtype=torch.float32, device=device)
        self.wsum = torch.zeros((wh, Wp), dtype=torch.float32, device=device)
        self.top, self.wh = 0, wh

    def move_to(self, r: int) -> None:
        """Rows above ``r`` are written: move the strips up (the shift is at most the stride, at most wh)."""
        shift = r - self.top
        if not shift:
            return
        keep = self.wh - shift
        self.strip[:, :keep] = self.strip[:, shift:]
        self.strip[:, keep:] = 0.0
        self.valid[:keep] = self.valid[shift:]
        self.valid[keep:] = False
        self.acc[:, :keep] = self.acc[:, shift:].clone()
        self.acc[:, keep:] = 0.0
        self.wsum[:keep] = self.wsum[shift:].clone()
        self.wsum[keep:] = 0.0
        self.top = r

    def predict_row(self, model: ModelFn, cols: list[int], ww: int, weight: torch.Tensor, batch_size: int,
                    device: str | torch.device) -> None:
        """Blend the softmax probabilities (or logits) of the windows at ``cols`` of the current row into the sums."""
        K = self.acc.shape[0]
        for j in range(0, len(cols), batch_size):
            chunk = cols[j : j + batch_size]
            batch = torch.from_numpy(np.stack([self.strip[:, :, c : c + ww] for c in chunk])).to(device)  # (B,C,wh,ww)
            with torch.inference_mode():
                probs = window_scores(model, batch, K) * weight  # (B, K, wh, ww)
                for p, c in zip(probs, chunk):
                    self.acc[:, :, c : c + ww] += p
                    self.wsum[:, c : c + ww] += weight

    @property
    def nbytes(self) -> int:
        return self.strip.nbytes + self.valid.nbytes + (self.acc.numel() + self.wsum.numel()) * 4


def _stream_raster(read: Callable[[int, int], np.ndarray], shape: tuple[int, int], bands: int, model: ModelFn,
                   stats: BandStats, nodata: float | None, win: tuple[int, ...], overlap: float, blend: str,
                   batch_size: int, lut: np.ndarray, lnodata: int, outputs: list[GeoTiffWriter], pkind: str | None,
                   device: str | torch.device, only: np.ndarray | None = None) -> dict[str, Any]:
    """The strip loop of ``predict_raster`` (see the module docstring). ``read(a, b)`` -> rows [a, b), (C, b-a, W);
    ``only``: the windows holding none of its True pixels are skipped."""
    H, W = shape
    wh, ww = win
    K = len(lut)
    rows, cols = window_starts(H, wh, overlap), window_starts(W, ww, overlap)
    Wp = max(W, ww)  # a window wider than the image is padded on the right
    weight = torch.from_numpy(blend_weights(win, blend)).to(device)  # (wh, ww)
    buf = StripBuffers(bands, K, wh, Wp, device, logits=blends_logits(model))
    counts = np.zeros(K, np.int64)
    loaded = max_read_rows = computed = rows_read = 0
    bar = WorkProgress(len(rows) * len(cols) if only is None else None, "predicting")
    for i, r in enumerate(rows):
        buf.move_to(r)
        a, b = max(loaded, r), min(r + wh, H)
        todo = cols if only is None else holding(only[r : r + wh], cols, ww)
        if b > a and todo:  # only rows not read for the previous strip; none for a strip with nothing to compute
            x, v = normalize(read(a, b), stats, nodata)  # (C, b-a, W), (b-a, W)
            buf.strip[:, a - r : b - r, :W] = x
            buf.valid[a - r : b - r, :W] = v
            loaded, max_read_rows, rows_read = b, max(max_read_rows, b - a), rows_read + b - a
            del x, v
        buf.predict_row(model, todo, ww, weight, batch_size, device)
        computed += len(todo)
        bar.update(len(todo))
        n = (rows[i + 1] if i + 1 < len(rows) else H) - r  # rows [r, r + n) are final
        counts += write_final_rows(buf, r, n, W, lut, lnodata, outputs, pkind, covered_only=only is not None)
    bar.close()
    return {"windows": len(rows) * len(cols), "windows_computed": computed, "rows_read": rows_read,
            "window_rows": len(rows), "window_cols": len(cols),
            "valid_pixels": int(counts.sum()), "class_counts": counts.tolist(), "max_buffer_pixels": wh * Wp,
            "max_read_pixels": max_read_rows * W, "strip_bytes": int(buf.nbytes),
            "writer_buffer_bytes": int(sum(w.buffer_bytes for w in outputs))}


def holding(strip: np.ndarray, cols: list[int], ww: int) -> list[int]:
    """The window origins of ``cols`` whose columns [c, c + ww) of the bool ``strip`` (rows of a window row) hold a
    True pixel."""
    total = np.concatenate([[0], np.cumsum(strip.any(axis=0))])
    return [c for c in cols if total[min(c + ww, strip.shape[1])] > total[c]]


def write_final_rows(buf: StripBuffers, r: int, n: int, W: int, lut: np.ndarray, lnodata: int,
                     outputs: list[GeoTiffWriter], pkind: str | None, covered_only: bool = False) -> np.ndarray:
    """Normalise the blended probabilities of the final rows [r, r + n), write their class labels (and
    probabilities) and return the class counts of their valid pixels (K,); ``covered_only``: pixels no computed
    window reached are nodata too."""
    K = len(lut)
    with torch.inference_mode():
        proba = buf.acc[:, :n, :W] / buf.wsum[:n, :W]  # (K, n, W)
        if buf.logits:
            proba = torch.softmax(proba, dim=0)
        index = proba.argmax(dim=0).cpu().numpy()  # (n, W) int64
    ok = buf.valid[:n, :W]
    if covered_only:
        ok = ok & (buf.wsum[:n, :W] > 0).cpu().numpy()
    labels = lut[index]  # (n, W) stored label values
    labels[~ok] = lnodata
    outputs[0].write(labels, (r, 0, n, W))
    if pkind:
        p = proba.cpu().numpy()  # (K, n, W) float32
        if pkind == "uint8":
            p = np.rint(p * PROBA_SCALE).astype(np.uint8)
            p[:, ~ok] = 255
        else:
            p[:, ~ok] = np.nan
        outputs[1].write(p, (r, 0, n, W))
    return np.bincount(index[ok], minlength=K)[:K]
