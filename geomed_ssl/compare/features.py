"""Features of the sample table, computed once per encoder (or baseline) and reused by every budget and seed.

Segmentation: per labelled pixel / voxel. An encoder's features are multi-layer patch features: the tokens of
several tapped blocks, concatenated and interpolated (bilinear / trilinear) at each pixel from the token grid of
the window holding it, never the CLS token alone. Windows tile the image without overlap and only windows holding
labelled pixels are run. Classification: per image, the mean of each tapped block's tokens, concatenated.

For the ``blocks`` split the features of training pixels are computed from the image with its test blocks blanked
(``allowed`` False set to 0, the normalised mean), so no training window sees a test-block pixel.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geomed_ssl.compare.task import Task
from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.models.encoder import ViTEncoder

PointFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def probe_layers(depth: int, layers: Sequence[int] | None = None) -> list[int]:
    """The blocks a frozen probe reads: ``finetune.layers`` when set, else 1/4, 1/2, 3/4 of the depth and the
    last block."""
    if layers:
        return sorted({int(i) for i in layers})
    return sorted({max(0, min(depth - 1, round(depth * f))) for f in (0.25, 0.5, 0.75)} | {depth - 1})


def read_image(record: Any, stats: BandStats, data_cfg: Any, nd: int,
               volumes: VolumeReader | None = None) -> np.ndarray:
    """A whole image, normalised with ``stats``: float32 (C, *S) on the grid the label arrays use."""
    if nd == 2:
        raw = RasterReader(max_open=2).read_window(record, 0, 0, *record.shape[-2:])
    else:
        raw, _ = (volumes or VolumeReader(data_cfg, max_cached=1)).load(record)
    nodata = data_cfg.nodata if data_cfg.nodata is not None else record.nodata
    image, _ = normalize(raw, stats, nodata)
    return image


class SegmentFeatures:
    """Per-pixel features of a segmentation task: ``point_fn(image, points (n, nd), allowed) -> (n, F)`` applied
    per image; the full view (nothing blanked) is computed once for the ``needed`` rows (sorted: those some split
    trains or tests on; default all) and cached."""

    def __init__(self, task: Task, load: Callable[[int], np.ndarray], point_fn: PointFn,
                 needed: np.ndarray | None = None):
        self.task, self.load, self.point_fn = task, load, point_fn
        self.needed = np.arange(task.values.size) if needed is None else np.asarray(needed)
        self._all: np.ndarray | None = None

    def _compute(self, rows: np.ndarray, allowed: list[np.ndarray] | None) -> np.ndarray:
        task, parts, order = self.task, [], []
        for f in np.unique(task.files[rows]):
            sel = rows[task.files[rows] == f]
            points = np.stack(np.unravel_index(task.flats[sel], task.shapes[f]), axis=1)  # (n, nd)
            parts.append(self.point_fn(self.load(int(f)), points, None if allowed is None else allowed[f]))
            order.append(sel)
        feats = np.concatenate(parts).astype(np.float32)
        out = np.empty_like(feats)
        out[np.searchsorted(rows, np.concatenate(order))] = feats  # back to the order of ``rows`` (sorted)
        return out

    def features(self, rows: np.ndarray, allowed: list[np.ndarray] | None = None) -> np.ndarray:
        """(len(rows), F) float32 features of table ``rows`` (sorted), from the view ``allowed`` leaves."""
        if allowed is not None:
            return self._compute(np.asarray(rows), allowed)
        if self._all is None:
            self._all = self._compute(self.needed, None)
        return self._all[np.searchsorted(self.needed, rows)]


class ImageFeatures:
    """Per-image features of a classification task: ``image_fn(i) -> (F,)``, all computed once."""

    def __init__(self, task: Task, image_fn: Callable[[int], np.ndarray]):
        self.task, self.image_fn = task, image_fn
        self._all: np.ndarray | None = None

    def features(self, rows: np.ndarray, allowed: Any = None) -> np.ndarray:
        if self._all is None:
            self._all = np.stack([self.image_fn(i) for i in range(len(self.task.records))]).astype(np.float32)
        return self._all[rows]


# -- encoders ---------------------------------------------------------------------------------------------------
def blank(image: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """``image`` (C, *S) with the pixels outside ``allowed`` set to 0 (the normalised mean)."""
    return image if allowed is None else image * allowed[None].astype(image.dtype)


def window_starts(points: np.ndarray, shape: Sequence[int], window: Sequence[int]) -> np.ndarray:
    """(n, nd) start of the tiling window holding each point: windows at multiples of the window size, the last
    one moved back to end at the image's edge (an image smaller than the window gets one window, padded)."""
    w = np.asarray(window)[None]
    return np.minimum((points // w) * w, np.maximum(np.asarray(shape)[None] - w, 0))


def crop(image: np.ndarray, start: Sequence[int], window: Sequence[int]) -> np.ndarray:
    """``image[:, start:start+window]`` with zeros outside the image: (C, *window)."""
    out = np.zeros((image.shape[0], *window), np.float32)
    src = tuple(slice(s, min(s + w, n)) for s, w, n in zip(start, window, image.shape[1:]))
    out[(slice(None), *[slice(0, sl.stop - sl.start) for sl in src])] = image[(slice(None), *src)]
    return out


def sample_grid(maps: torch.Tensor, rel: np.ndarray, window: Sequence[int]) -> torch.Tensor:
    """Interpolate (F, *grid) token maps at pixel centres ``rel`` (n, nd) of a window: (n, F)."""
    nd = len(window)
    coords = (torch.as_tensor(rel, dtype=torch.float32) + 0.5) / torch.tensor(window, dtype=torch.float32) * 2 - 1
    grid = coords.flip(-1).reshape((1,) + (1,) * (nd - 1) + (-1, nd)).to(maps.device)  # (x, y[, z]) order
    out = F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(maps.shape[0], -1).T


def encoder_points(encoder: ViTEncoder, layers: list[int], batch: int = 16) -> PointFn:
    """The point function of a frozen encoder: tapped blocks' tokens, concatenated, interpolated per pixel."""
    window = tuple(encoder.config.img_size)
    device = encoder.cls_token.device

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        image = blank(image, allowed)
        starts = window_starts(points, image.shape[1:], window)
        uniq, which = np.unique(starts, axis=0, return_inverse=True)
        which = which.reshape(-1)
        out = np.zeros((points.shape[0], len(layers) * encoder.embed_dim), np.float32)
        with torch.no_grad():
            for b0 in range(0, len(uniq), batch):
                x = torch.from_numpy(np.stack([crop(image, s, window) for s in uniq[b0:b0 + batch]])).to(device)
                feats, grid = encoder.forward_features(x, layers)  # L x (B, N, D)
                maps = torch.cat([f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *grid) for f in feats], 1)
                for j in range(maps.shape[0]):
                    idx = np.flatnonzero(which == b0 + j)
                    out[idx] = sample_grid(maps[j], points[idx] - uniq[b0 + j], window).cpu().numpy()
        return out

    return fn


def encoder_image_fn(encoder: ViTEncoder, layers: list[int], load: Callable[[int], np.ndarray]
                     ) -> Callable[[int], np.ndarray]:
    """Per image: the mean of each tapped block's tokens, concatenated (L * D,)."""
    device = encoder.cls_token.device

    def fn(i: int) -> np.ndarray:
        with torch.no_grad():
            feats, _ = encoder.forward_features(torch.from_numpy(load(i))[None].to(device), layers)
        return torch.cat([f.mean(dim=1) for f in feats], dim=1)[0].cpu().numpy()

    return fn


def encoder_features(task: Task, encoder: ViTEncoder, layers: list[int], load: Callable[[int], np.ndarray],
                     needed: np.ndarray | None = None) -> SegmentFeatures | ImageFeatures:
    """The frozen features of ``encoder`` on the task, ``load(i)`` giving image ``i`` as the encoder reads it."""
    encoder.eval()
    if task.kind == "segment":
        return SegmentFeatures(task, load, encoder_points(encoder, layers), needed)
    return ImageFeatures(task, encoder_image_fn(encoder, layers, load))


def memo(load: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    """``load`` with its results kept (each image is read once per feature set)."""
    cache: dict[int, np.ndarray] = {}

    def fn(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = load(i)
        return cache[i]

    return fn


def check_feature_memory(rows: int, dims: int, name: str, unit: str) -> None:
    """A DataError before frozen features of ``rows`` samples x ``dims`` float32 would take over half the memory."""
    import os

    need = rows * dims * 4
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > total / 2:
        from geomed_ssl.errors import DataError

        raise DataError(f"the frozen features of {name} for {rows} labelled {unit}s x {dims} dims need "
                        f"{need / 2**30:.1f} GiB, over half of this machine's {total / 2**30:.0f} GiB; test on a "
                        "subsample with --set labels.test_fraction=0.1 (or smaller), or use --protocol finetune.")


def slab_rows(shape: Sequence[int], channels: int, budget: float = 2e7) -> int:
    """Rows (first spatial axis) per slab so one slab of ``channels`` maps holds about ``budget`` values."""
    return max(1, int(budget // max(1, channels * math.prod(shape[1:]))))
