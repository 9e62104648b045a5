"""Georeferenced outputs written piece by piece: a GeoTIFF opened once and filled window by window, and a NIfTI
written on the exact grid (shape, affine, header) of a reference file.

Both write to a hidden partial file beside the target (``.partial-<pid>.<host>-<name>``, see
:mod:`geomed_ssl.outfiles`) and flush and rename it on success, so an interrupted prediction never leaves a
half-written output under the final name; the next prediction into that folder deletes what a killed one left.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.errors import WRITE_ERRNOS, DataError
from geomed_ssl.geo.gdal_read import check_written
from geomed_ssl.geo.grids import placed
from geomed_ssl.outcommands import INPUT_TAG, provenance_tags, sidecar_path
from geomed_ssl.outfiles import atomic_path, commit_partial, naming_write_errors, partial_path

BLOCK = 256  # output tile side (pixels)
PROBA_SCALE = 254  # uint8 probabilities store round(p * 254); 255 is nodata


def proba_path(out_path: str | Path) -> Path:
    """``X_pred.tif`` -> ``X_pred_proba.tif`` (and ``.nii.gz`` alike)."""
    out = Path(out_path)
    suffix = next((s for s in (".nii.gz", ".nii", ".tif", ".tiff") if out.name.lower().endswith(s)), out.suffix)
    return out.with_name(out.name[: len(out.name) - len(suffix)] + "_proba" + suffix)


OVERVIEW_SIDE = 256  # overviews halve a map until its longer side fits in this (gdaladdo's default -minsize)


def overview_levels(height: int, width: int) -> list[int]:
    """The decimation factors (2, 4, ...) of a raster's overviews: halving until the longer side is at most
    ``OVERVIEW_SIDE`` pixels; none for a raster that small already."""
    levels, factor = [], 1
    while math.ceil(max(height, width) / factor) > OVERVIEW_SIDE:
        factor *= 2
        levels.append(factor)
    return levels


def _window_tuple(window: Any) -> tuple[int, int, int, int]:
    """(row_off, col_off, height, width) from a rasterio Window or a 4-sequence in that order."""
    if hasattr(window, "row_off"):
        return int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    r, c, h, w = (int(v) for v in window)
    return r, c, h, w


class GeoTiffWriter:
    """A tiled (256x256), deflate-compressed GeoTIFF on the grid of ``like_profile`` (crs, transform, width, height;
    ``gcps`` / ``rpcs`` as rasterio gives them, for inputs georeferenced that way).

    ``write(array, window)`` puts ``array`` (count, h, w) or (h, w) at ``window`` ((row_off, col_off, h, w) or a
    rasterio Window). Full-width row strips written top to bottom (what streaming prediction does) are gathered
    into whole tile rows before they reach GDAL, so every tile is compressed exactly once; other windows are written
    directly. ``scales`` (one per band) are stored as GDAL scale factors, ``tags`` as dataset metadata (what made
    the file), ``sidecar`` as GDAL's sidecar (``X.tif.aux.xml``: what a GeoTIFF cannot hold, a class map's category
    names), renamed just after the file; a file replaced loses the old one's sidecar first. ``overviews`` (a GDAL
    resampling: ``mode``, ``average``) adds internal overviews (:func:`overview_levels`) once the file is written.
    Use as a context manager or call ``close()``; ``abort()`` drops the partial files.
    """

    def __init__(self, path: str | Path, like_profile: dict[str, Any], count: int, dtype: str | np.dtype,
                 nodata: float | None, descriptions: Sequence[str] | None = None,
                 scales: Sequence[float] | None = None, tags: dict[str, str] | None = None,
                 colormap: dict[int, tuple[int, ...]] | None = None, sidecar: str | None = None,
                 overviews: str | None = None):
        import rasterio

        self.path = Path(path)
        self.sidecar, self._sidecar_text = sidecar_path(self.path), sidecar
        if overviews not in (None, "mode", "average", "nearest"):
            raise ValueError(f"overviews: mode, average, nearest or None, got {overviews!r}")
        self._overviews = overviews
        self.height, self.width = int(like_profile["height"]), int(like_profile["width"])
        self.count, self.dtype = int(count), np.dtype(dtype)
        kind, transform = self.dtype.kind, like_profile.get("transform")
        profile = {
            "driver": "GTiff", "height": self.height, "width": self.width, "count": self.count,
            "dtype": self.dtype.name, "crs": like_profile.get("crs"),
            "transform": transform if placed(like_profile.get("crs"), transform) else None,
            "nodata": nodata, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
            "predictor": 3 if kind == "f" else 2, "interleave": "band" if self.count > 1 else "pixel",
            "BIGTIFF": "IF_SAFER",
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp, self._sidecar_tmp = partial_path(self.path), partial_path(self.sidecar)
        self._committed = self._finished = self._sidecar_committed = False
        self._ds = None
        try:  # a failure or a stop (Ctrl-C, SIGTERM) while the file is set up leaves no partial file behind
            try:
                self._ds = rasterio.open(self._tmp, "w", **profile)
            except Exception as err:
                raise DataError(f"cannot create '{self.path}': {err}. Check the output folder is writable.") from None
            self._describe(like_profile, colormap, descriptions, scales, tags)
            self._pending = np.zeros((self.count, min(BLOCK, self.height), self.width), self.dtype)  # one tile row
        except BaseException:
            self.abort()
            raise
        self._pending_top = 0  # first row held in _pending
        self._pending_rows = 0
        self.rows_written = 0
        self.buffer_bytes = int(self._pending.nbytes)  # bytes of the tile-row buffer (its largest size)

    def _describe(self, like_profile: dict[str, Any], colormap: dict[int, tuple[int, ...]] | None,
                  descriptions: Sequence[str] | None, scales: Sequence[float] | None,
                  tags: dict[str, str] | None) -> None:
        """Georeferencing by control points or RPCs, colour table, band names, scales and tags of the new file."""
        gcps, gcp_crs = like_profile.get("gcps") or ([], None)
        if gcps:  # georeferenced by ground control points (e.g. Sentinel-1 GRD), not by a transform
            self._ds.gcps = (gcps, gcp_crs)
        if like_profile.get("rpcs") is not None:
            self._ds.rpcs = like_profile["rpcs"]
        if colormap is not None:  # a class map: GIS show it in its classes' colours
            self._ds.write_colormap(1, colormap)
        if descriptions is not None:
            for i, name in enumerate(descriptions, start=1):
                self._ds.set_band_description(i, str(name))
        if scales is not None:
            self._ds.scales = tuple(float(s) for s in scales)
        if tags or like_profile.get("area_or_point"):  # "Point": the input's pixel-is-point convention (DEMs)
            self._ds.update_tags(**{str(k): str(v) for k, v in (tags or {}).items()},
                                 **({"AREA_OR_POINT": like_profile["area_or_point"]}
                                    if like_profile.get("area_or_point") else {}))

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, array: np.ndarray, window: Any) -> None:
        """Write ``array`` (count, h, w) or (h, w) at ``window`` = (row_off, col_off, h, w) / rasterio Window."""
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[None]
        r, c, h, w = _window_tuple(window)
        if arr.shape != (self.count, h, w):
            raise ValueError(f"array of shape {arr.shape} does not fit window {[r, c, h, w]} of a "
                             f"{self.count}-band output")
        if r < 0 or c < 0 or r + h > self.height or c + w > self.width:
            raise ValueError(f"window {[r, c, h, w]} is outside the {self.height}x{self.width} output")
        if c == 0 and w == self.width and r == self._pending_top + self._pending_rows:
            self._append_rows(arr)
        else:
            self._flush()
            self._write_direct(arr, (r, c, h, w))

    def _append_rows(self, arr: np.ndarray) -> None:
        done = 0
        while done < arr.shape[1]:
            room = self._pending.shape[1] - self._pending_rows
            take = min(room, arr.shape[1] - done)
            self._pending[:, self._pending_rows : self._pending_rows + take] = arr[:, done : done + take]
            self._pending_rows += take
            done += take
            end = self._pending_top + self._pending_rows
            if self._pending_rows == self._pending.shape[1] or end == self.height:
                self._flush()

    def _flush(self) -> None:
        if self._pending_rows:
            top, n = self._pending_top, self._pending_rows
            self._write_direct(self._pending[:, :n], (top, 0, n, self.width))
            self._pending_top, self._pending_rows = top + n, 0
            self._pending = self._pending[:, : min(BLOCK, max(self.height - self._pending_top, 1))]

    def _write_direct(self, arr: np.ndarray, win: tuple[int, int, int, int]) -> None:
        from rasterio.windows import Window

        r, c, h, w = win
        with naming_write_errors(self.path):
            for band in range(self.count):  # band by band: each (h, w) slice is contiguous, so nothing is copied
                self._ds.write(np.ascontiguousarray(arr[band], dtype=self.dtype), band + 1,
                               window=Window(c, r, w, h))
        self.rows_written += h if (c == 0 and w == self.width) else 0

    # -- finishing --------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Flush and close the temporary file and check it reads back whole (:func:`check_written`); a write that
        failed (a full disk) is an OSError naming the final file. The final name is left as it was."""
        if self._finished or self._committed:
            return
        if self._ds is None:
            raise ValueError(f"the writer of '{self.path}' was aborted or failed: nothing to finish")
        try:
            with naming_write_errors(self.path):
                self._flush()
                self._ds.close()
        finally:
            self._ds = None
        if self._overviews and overview_levels(self.height, self.width):
            self._build_overviews()
        check_written(self._tmp, self.path)
        if self._sidecar_text is not None:
            with naming_write_errors(self.sidecar):
                self._sidecar_tmp.write_text(self._sidecar_text, encoding="utf-8")
        self._finished = True

    def _build_overviews(self) -> None:
        """Internal overviews of the closed temporary file (``overview_levels``, resampled as ``overviews`` says:
        ``mode`` keeps a class map's values, ``average`` for probabilities), so a viewer draws a whole scene from
        them instead of every pixel."""
        import rasterio
        from rasterio.enums import Resampling

        with naming_write_errors(self.path), rasterio.open(self._tmp, "r+") as ds:
            ds.build_overviews(overview_levels(self.height, self.width), Resampling[self._overviews])
            ds.update_tags(ns="rio_overview", resampling=self._overviews)

    def commit(self) -> Path:
        """Move the finished file to its final name (after :meth:`finish`, for every file of a result first); a
        writer whose finish failed, or that was aborted, never commits."""
        if not self._committed:
            self.finish()
            if self.path.exists():  # GDAL's sidecar of the map replaced (its names, statistics a viewer cached) goes
                self.sidecar.unlink(missing_ok=True)  # first: a stop after this leaves no old names on a new map
            commit_partial(self._tmp, self.path)
            self._committed = True
        if not self._sidecar_committed:
            if self._sidecar_text is not None:
                commit_partial(self._sidecar_tmp, self.sidecar)
            self._sidecar_committed = True
        return self.path

    def close(self) -> Path:
        """Flush, close, check and move the file to its final name."""
        return self.commit()

    def abort(self) -> None:
        """Close and delete the partial file (the final name is left untouched); after a commit, nothing to do.
        Never raises: callers abort every writer of a scene in turn."""
        try:
            if self._ds is not None:
                self._ds.close()
        except Exception:  # noqa: BLE001 - the partial file is deleted below all the same
            pass
        finally:
            self._ds = None
            if not self._committed:
                self._tmp.unlink(missing_ok=True)
            if not self._sidecar_committed:
                self._sidecar_tmp.unlink(missing_ok=True)

    def __enter__(self) -> GeoTiffWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def nifti_like(array: np.ndarray, reference_path: str | Path, description: str = "geomed-ssl prediction",
               intent: str = "none", source: str | None = None, run: str | None = None,
               model: str | None = None, classes: str | None = None) -> Any:
    """A NIfTI image of ``array`` (X, Y, Z) or (X, Y, Z, K) in the reference file's voxel order with its affine and
    header.

    The array must already be on the reference's grid (same spatial shape, same axis order); the output then
    overlays the reference exactly (identical affine, sform/qform codes and zooms). The reference's display window
    (``cal_min`` / ``cal_max``, an intensity range that would show a class map as blank in FSLeyes or MRIcron), its
    intent (a z-score map's) and its time step (a 4D series') are not carried: ``intent`` is the output's ("label"
    for a class map), a fourth axis holds classes, and ``descrip`` says what the file is; ``source``, the input it
    was predicted from, is kept in a comment extension (:func:`recorded_input`), with ``run`` (``RUN_TAG``), the
    ``model`` folder that made it (whole, where ``descrip`` holds 79 ASCII characters) and the toolkit's version,
    the tags a GeoTIFF prediction carries (``provenance_tags``; ``classes``: :func:`class_record`).
    """
    import nibabel as nib

    ref = nib.load(str(reference_path))
    arr = np.asarray(array)
    if arr.shape[:3] != tuple(ref.shape[:3]) or arr.ndim not in (3, 4):
        raise DataError(f"cannot write {list(arr.shape)} on the grid of '{reference_path}' "
                        f"({list(ref.shape[:3])}): the prediction must be mapped back to the file's voxel grid first.")
    cls = nib.Nifti2Image if isinstance(ref, nib.Nifti2Image) else nib.Nifti1Image
    header = ref.header.copy()
    header.set_data_dtype(arr.dtype)
    img = cls(arr, ref.affine, header)
    img.header.set_slope_inter(math.nan, math.nan)  # values are stored as they are (no scaling)
    img.header["cal_min"], img.header["cal_max"] = 0, 0  # 0 / 0: viewers window the values themselves
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    sform, scode = ref.header.get_sform(coded=True)
    qform, qcode = ref.header.get_qform(coded=True)
    if scode:
        img.set_sform(sform, int(scode))
    if qcode:
        img.set_qform(qform, int(qcode))
    img.header.set_xyzt_units(ref.header.get_xyzt_units()[0], "unknown")
    img.header.set_intent(intent)
    img.header["toffset"] = 0
    if arr.ndim == 4:
        img.header.set_zooms((*ref.header.get_zooms()[:3], 1.0))
    img.header.extensions[:] = [e for e in img.header.extensions  # the reference's own record, if it was one
                                if not (e.get_code() == 6 and INPUT_TAG.encode() in e.get_content())]
    if source is not None:
        record = provenance_tags(source, model=model, run=run, classes=classes)
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps(record).encode()))
    return img


def save_nifti(img: Any, path: Path, final: Path) -> None:
    """``nib.save`` to ``path`` (a temporary name of ``final``); a failure other than a file-system refusal (which
    the caller's atomic write reports, naming ``final``) is a DataError naming ``final``."""
    import nibabel as nib

    try:
        nib.save(img, str(path))
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise  # the caller's atomic write names the final file in one line
        raise DataError(f"cannot write '{final}': {err.strerror or err}.") from None
    except Exception as err:
        raise DataError(f"cannot write '{final}': {err}.") from None


def write_nifti_like(array: np.ndarray, reference_path: str | Path, out_path: str | Path,
                     description: str = "geomed-ssl prediction", intent: str = "none") -> Path:
    """Save :func:`nifti_like` at ``out_path``, atomically."""
    img = nifti_like(array, reference_path, description, intent)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_nifti(img, tmp, out)
    return out
