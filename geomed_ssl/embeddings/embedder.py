"""The ``Embedder``: an encoder with its statistics and reading settings that turns files, windows and boxes into
vectors at image, window or patch level (see :mod:`geomed_ssl.embeddings.extract` for the levels and pooling)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import FileRecord
from geomed_ssl.files.listing import file_stamps
from geomed_ssl.bands.conform import conform_record
from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.windows.tiling import centre_start, grid_starts, inside_starts, patch_floor
from geomed_ssl.embeddings.maps import map_geometry, raster_gcps
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.cls_heads import POOLS
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.models.tokens import token_grid

LEVELS = ("image", "window", "patch")
STRIP_BYTES = 256 * 2**20  # largest raster strip block read at once
CHUNK_ROWS = 65_536  # rows per Parquet chunk


class Embedder:
    """An encoder with its statistics and reading settings: turns files, windows and boxes into vectors. The one
    code path for bulk extraction, re-embedding a stored row and search queries."""

    def __init__(self, encoder: ViTEncoder, data_cfg: DataConfig, level: str = "image",
                 window: Sequence[int] | None = None, stride: Sequence[int] | None = None, pool: str = "mean",
                 batch_size: int = 32, min_valid: float = 0.0, device: str | torch.device = "cpu"):
        cfg = encoder.config
        self.encoder, self.data_cfg, self.level, self.pool = encoder, data_cfg, level, pool
        self.nd, self.patch = cfg.spatial_dims, tuple(cfg.patch_size)
        self.window = tuple(window or cfg.img_size)
        self.stride = tuple(stride or self.window)
        self.batch_size, self.min_valid, self.device = int(batch_size), float(min_valid), torch.device(device)
        self.stats = BandStats.from_dict(cfg.stats)
        self.raster = RasterReader(max_open=4) if self.nd == 2 else None
        self.volume = VolumeReader(data_cfg, max_cached=1) if self.nd == 3 else None
        self.windows_encoded = 0
        self.progress: Callable[[int], Any] | None = None  # called with the number of windows of each batch
        self._check()

    def _check(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got '{self.level}'.")
        if self.pool not in POOLS:
            raise ConfigError(f"--pool must be one of auto, {', '.join(POOLS)}, got '{self.pool}'.")
        try:
            self.token_grid = token_grid(self.window, self.patch)  # tokens along each axis of a window
        except DataError:
            raise ConfigError(f"--window {list(self.window)} must be a multiple of the encoder's token patch "
                              f"{list(self.patch)} on each of its {self.nd} axes.") from None
        if self.level == "patch" and self.stride != self.window:
            raise ConfigError("--level patch tiles each file with non-overlapping windows: leave --stride unset "
                              f"(or equal to --window {list(self.window)}).")
        if not 0.0 <= self.min_valid <= 1.0:
            raise ConfigError(f"--min-valid must be in [0, 1], got {self.min_valid}.")

    # -- reading --------------------------------------------------------------------------------------------------
    def nodata(self, record: FileRecord) -> float | None:
        return self.data_cfg.nodata if self.data_cfg.nodata is not None else record.nodata

    def shape(self, record: FileRecord) -> tuple[int, ...]:
        """Spatial shape in the reader's orientation (volumes: RAS after resampling)."""
        return tuple(record.shape) if self.nd == 2 else self.volume.volume_shape(record)

    def read(self, record: FileRecord, box: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (C, *size) and valid (*size) of ``box`` = [row, col, h, w] or [i, j, k, di, dj, dk] (the
        reader's RAS voxel axes); outside the file is invalid (0). The record's bands are read by name in the
        statistics' order (``conform_record``)."""
        record = conform_record(record, self.stats.band_names, self.stats.wavelengths)
        box = [int(v) for v in box]
        raw = self.raster.read_window(record, *box) if self.nd == 2 else self.volume.read_box(record, *box)
        return normalize(raw, self.stats, self.nodata(record))

    def file_meta(self, record: FileRecord, root: str | None = None) -> dict[str, Any]:
        """Path, grid and georeferencing of a file, and its map grid at this level."""
        shape = self.shape(record)
        meta: dict[str, Any] = {"path": record.path, "paths": list(record.paths), "kind": record.kind,
                                "shape": list(shape), "rel": os.path.relpath(record.path, root) if root else None,
                                "stamps": file_stamps(record.paths), **({"case": record.case} if record.case else {})}
        if self.nd == 2:
            meta.update(crs=record.crs, transform=list(record.transform or [1, 0, 0, 0, 1, 0]))
            if record.crs is None:
                meta.update(raster_gcps(record.paths[0]))
        else:
            meta.update(crs=None, affine=np.asarray(self.volume.affine(record)).tolist())
        meta.update(map_geometry(record.kind, shape, self.level, self.window, self.stride, self.patch,
                                 meta.get("transform"), meta.get("affine")))
        return meta

    # -- encoding -------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, C, *S) normalised, (B, *S) valid -> pooled (B, D), tokens (B, N, D) (patch level, else None) and
        token valid fractions (B, N)."""
        out = self.encoder(torch.from_numpy(np.ascontiguousarray(images)).to(self.device)).float()  # (B, 1+N, D)
        tokens = out[:, 1:]  # (B, N, D)
        grid = token_grid(images.shape[2:], self.patch)
        shape = [valid.shape[0]] + [v for g, p in zip(grid, self.patch) for v in (g, p)]
        tv = valid.reshape(shape).mean(axis=tuple(range(2, 2 + 2 * self.nd, 2)), dtype=np.float32)  # (B, *grid)
        tv = tv.reshape(len(valid), -1)  # (B, N)
        if self.pool == "cls":
            pooled = out[:, 0]
        else:
            w = torch.from_numpy(tv > 0).to(self.device).float()  # (B, N)
            w[w.sum(1) == 0] = 1.0
            pooled = (tokens * w[..., None]).sum(1) / w.sum(1, keepdim=True)
        self.windows_encoded += len(images)
        if self.progress is not None:
            self.progress(len(images))
        return pooled.cpu().numpy(), tokens.cpu().numpy() if self.level == "patch" else None, tv

    def crop(self, start: Sequence[int], size: Sequence[int], where: str) -> list[int]:
        """The centre crop of a region to the largest multiple of the token patch: [*start, *size]."""
        keep = [patch_floor(int(s), p) for s, p in zip(size, self.patch)]
        if 0 in keep:
            raise ConfigError(f"{where} ({list(size)}) is smaller than the token patch {list(self.patch)}.")
        return [int(a) + centre_start(int(s), k) for a, s, k in zip(start, size, keep)] + keep

    def region_vector(self, record: FileRecord, box: Sequence[int]) -> tuple[np.ndarray, list[int], float]:
        """One vector for a region (the image-level rule): (vector (D,), the box actually encoded, valid fraction).

        A region within one window is centre-cropped to the token patch and encoded whole; a larger one is covered
        by windows kept inside it, whose vectors are averaged weighted by valid fraction."""
        start, size = [int(v) for v in box[: self.nd]], [int(v) for v in box[self.nd:]]
        if all(s <= w for s, w in zip(size, self.window)):
            crop = self.crop(start, size, f"region {list(box)} of '{record.path}'")
            image, valid = self.read(record, crop)
            return self.encode(image[None], valid[None])[0][0], crop, float(valid.mean())
        axes = [inside_starts(s, w, st) for s, w, st in zip(size, self.window, self.stride)]
        offsets = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.nd).tolist()
        boxes = [[a + o for a, o in zip(start, offs)] + list(self.window) for offs in offsets]
        vecs, weights = [], []
        for i in range(0, len(boxes), self.batch_size):
            pairs = [self.read(record, b) for b in boxes[i:i + self.batch_size]]
            pooled, _, _ = self.encode(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
            vecs.append(pooled)
            weights += [float(p[1].mean()) for p in pairs]
        w = np.asarray(weights)
        vec = (np.concatenate(vecs) * w[:, None]).sum(0) / w.sum() if w.sum() > 0 else np.concatenate(vecs).mean(0)
        return vec.astype(np.float32), start + size, float(w.mean())

    # -- rows -----------------------------------------------------------------------------------------------------
    def image_rows(self, records: Sequence[FileRecord], root: str | None = None
                   ) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """(file meta, one row) per file, in order; files of one size that fit a window are batched together."""
        pending: list[tuple[dict[str, Any], list[int], np.ndarray, np.ndarray]] = []

        def flush() -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
            if pending:
                pooled, _, _ = self.encode(np.stack([p[2] for p in pending]), np.stack([p[3] for p in pending]))
                for (meta, crop, _, valid), vec in zip(pending, pooled):
                    yield meta, self._row(crop, crop, float(valid.mean()), vec)
                pending.clear()

        for rec in records:
            meta = self.file_meta(rec, root)
            size = meta["shape"]
            if all(s <= w for s, w in zip(size, self.window)):
                crop = self.crop([0] * self.nd, size, f"'{rec.path}'")
                if pending and (len(pending) >= self.batch_size or pending[0][1][self.nd:] != crop[self.nd:]):
                    yield from flush()
                image, valid = self.read(rec, crop)
                pending.append((meta, crop, image, valid))
            else:
                yield from flush()
                whole = [0] * self.nd + list(size)
                vec, _, vf = self.region_vector(rec, whole)
                yield meta, self._row(whole, whole, vf, vec)
        yield from flush()

    def _row(self, box: list[int], window: list[int], vf: float, vec: np.ndarray) -> dict[str, np.ndarray]:
        return {"box": np.asarray([box]), "window": np.asarray([window]), "grid_index": np.full((1, self.nd), -1),
                "valid_fraction": np.asarray([vf], np.float32), "vector": vec[None]}

    def windows(self, record: FileRecord, restrict: Sequence[int] | None = None
                ) -> Iterator[tuple[list[int], list[int], np.ndarray, np.ndarray]]:
        """(grid index, box, image, valid) of every window of the grid (only those meeting ``restrict``, a box)."""
        shape = self.shape(record)
        starts = [grid_starts(s, w, st) for s, w, st in zip(shape, self.window, self.stride)]
        if restrict is not None:
            lo, hi = restrict[: self.nd], [a + n for a, n in zip(restrict[: self.nd], restrict[self.nd:])]
            starts = [[s for s in ax if s < h and s + w > l] for ax, l, h, w in zip(starts, lo, hi, self.window)]
        if self.nd == 3 or restrict is not None:
            for idx in np.ndindex(*[len(a) for a in starts]):
                box = [starts[a][i] for a, i in enumerate(idx)] + list(self.window)
                yield [int(v) for v in idx], box, *self.read(record, box)
            return
        wh, ww = self.window
        per_block = max(1, STRIP_BYTES // (4 * record.num_bands * wh * ww))
        for i, r in enumerate(starts[0]):  # one strip of windows at a time, read once, cut into windows
            for j0 in range(0, len(starts[1]), per_block):
                cols = starts[1][j0:j0 + per_block]
                image, valid = self.read(record, [r, cols[0], wh, cols[-1] + ww - cols[0]])
                for j, c in enumerate(cols, start=j0):
                    o = c - cols[0]
                    yield [i, j], [r, c, wh, ww], image[:, :, o:o + ww], valid[:, o:o + ww]

    def window_rows(self, record: FileRecord, meta: dict[str, Any], restrict: Sequence[int] | None = None,
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[dict[str, np.ndarray]]:
        """Rows of one file at window or patch level, in chunks of about ``chunk_rows``."""
        grid, nd, batch, buf = np.asarray(meta["grid"]), self.nd, [], []
        tgrid = np.asarray(self.token_grid)
        cells = np.asarray(list(np.ndindex(*tgrid)), np.int64).reshape(-1, nd)  # (N, nd) token -> cell in window

        def run() -> None:
            pooled, tokens, tv = self.encode(np.stack([b[2] for b in batch]), np.stack([b[3] for b in batch]))
            gi = np.asarray([b[0] for b in batch], np.int64)  # (B, nd)
            boxes = np.asarray([b[1] for b in batch], np.int64)  # (B, 2 nd)
            if self.level == "window":
                vf = np.asarray([b[3].mean() for b in batch], np.float32)
                keep = (vf > 0) & (vf >= self.min_valid)
                buf.append({"box": boxes[keep], "window": boxes[keep], "grid_index": gi[keep],
                            "valid_fraction": vf[keep], "vector": pooled[keep]})
            else:
                g = gi[:, None] * tgrid + cells[None]  # (B, N, nd) cell index in the file's map grid
                keep = (tv > 0) & (tv >= self.min_valid) & (g < grid).all(-1)  # (B, N)
                start = boxes[:, None, :nd] + cells[None] * np.asarray(self.patch)  # (B, N, nd)
                cbox = np.concatenate([start, np.broadcast_to(np.asarray(self.patch), start.shape)], -1)
                buf.append({"box": cbox[keep], "window": np.broadcast_to(boxes[:, None], cbox.shape)[keep],
                            "grid_index": g[keep], "valid_fraction": tv[keep], "vector": tokens[keep]})
            batch.clear()

        def rows() -> dict[str, np.ndarray]:
            out = {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
            buf.clear()
            return out

        for item in self.windows(record, restrict):
            batch.append(item)
            if len(batch) >= self.batch_size:
                run()
                if sum(len(b["vector"]) for b in buf) >= chunk_rows:
                    yield rows()
        if batch:
            run()
        if buf and sum(len(b["vector"]) for b in buf):
            yield rows()
