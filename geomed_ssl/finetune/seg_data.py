"""Training windows for few-label segmentation: windows around sampled labelled pixels (2D) or voxels (3D).

Targets are class indices at the training pixels and ``IGNORE`` (-1) everywhere else, so the loss sees exactly the
labels that were sampled (sparse-label training) and nothing of the test set.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from geomed_ssl.windows.crops import pad_crop
from geomed_ssl.data.labelled import IGNORE, augment, geometry
from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import BandStats, normalize


def sparse_target(shape: Sequence[int], flat_index: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A full-size int16 map: ``classes`` at ``flat_index``, ``IGNORE`` elsewhere."""
    target = np.full(int(np.prod(shape)), IGNORE, np.int16)
    target[flat_index] = classes
    return target.reshape(shape)


class SparseLabelDataset(Dataset):
    """Map-style windows, each containing at least one training pixel; sample ``i`` is a pure function of (seed, i).

    Args:
        records: image ``FileRecord``s (one per labelled image).
        targets: per record, a full-size int16 map (class index at training pixels, ``IGNORE`` elsewhere), in the
            orientation the readers return (rasters as stored, volumes RAS).
        stats: normalisation statistics (from the encoder for a pretrained model).
        window: window / patch size in pixels or voxels.
        allowed: per record, a bool map of the pixels a training window may show (the training blocks of a
            ``blocks`` split, the training images of an ``images`` one): the others are blanked (0, not valid),
            so no window sees a test block.
    """

    def __init__(self, records: Sequence[Any], targets: Sequence[np.ndarray], stats: BandStats, data_cfg: Any,
                 window: Sequence[int], seed: int = 0, augment: bool = True, length: int = 10**9,
                 allowed: Sequence[np.ndarray] | None = None, aug_cfg: Any = None):
        self.records, self.targets, self.stats, self.data_cfg = list(records), list(targets), stats, data_cfg
        self.aug_cfg = aug_cfg  # the recipe's augment section: its flip and rot90 (None: both)
        self.allowed = list(allowed) if allowed is not None else None
        self.window, self.seed, self.augment, self.length = tuple(window), seed, augment, length
        self.points = [np.flatnonzero(t.reshape(-1) != IGNORE) for t in self.targets]
        counts = np.array([len(p) for p in self.points], float)
        if counts.sum() == 0:
            raise ValueError("no training labels to sample windows around")
        self.file_p = counts / counts.sum()
        self.raster_reader = RasterReader() if len(self.window) == 2 else None
        self.volume_reader = VolumeReader(data_cfg) if len(self.window) == 3 else None
        # scenes that fit the reader's region cache together are read once, whole, and each window cut from them
        # (one that fits alone would evict another's on every few samples, a whole scene read per window)
        self.whole = self.raster_reader is not None and sum(
            int(np.prod(r.shape[-2:])) * max(r.num_bands, 1 + max(r.band_index or [0])) * 8 for r in self.records
        ) <= self.raster_reader.cache_bytes

    def __len__(self) -> int:
        return self.length

    def read(self, record: Any, start: Sequence[int]) -> np.ndarray:
        if self.raster_reader is not None:
            whole = (0, 0, *map(int, record.shape[-2:])) if self.whole else None
            return self.raster_reader.read_window(record, *start, *self.window, region=whole)
        return self.volume_reader.read_box(record, *start, *self.window)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 4242, int(i)])
        f = int(rng.choice(len(self.records), p=self.file_p))
        target_map = self.targets[f]
        point = np.unravel_index(int(rng.choice(self.points[f])), target_map.shape)
        start = []
        for p, w, dim in zip(point, self.window, target_map.shape):
            lo, hi = p - w + 1, p  # windows that contain the point
            if dim >= w:
                lo, hi = max(lo, 0), min(hi, dim - w)  # and lie inside the image
            start.append(int(rng.integers(lo, hi + 1)))
        record = self.records[f]
        nodata = self.data_cfg.nodata if self.data_cfg.nodata is not None else record.nodata
        image, valid = normalize(self.read(record, start), self.stats, nodata)
        target = pad_crop(target_map, start, self.window, IGNORE)
        if self.allowed is not None:  # blocks / images split: test pixels are blanked, never shown
            shown = pad_crop(self.allowed[f], start, self.window, False)
            image[:, ~shown] = 0.0
            valid &= shown
        target[~valid] = IGNORE
        if self.augment:
            image, valid, target = augment(image, valid, target, rng, **geometry(self.aug_cfg))
        return {"image": torch.from_numpy(image), "valid": torch.from_numpy(valid),
                "target": torch.from_numpy(target.astype(np.int64))}
