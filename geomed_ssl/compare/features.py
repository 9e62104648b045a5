"""Features of the sample table, computed once per encoder (or baseline) and reused by every budget and seed.

Segmentation: per labelled pixel / voxel. An encoder's features are multi-layer patch features: the tokens of
several tapped blocks, concatenated and interpolated (bilinear / trilinear) at each pixel from the token grids of
the windows holding it, never the CLS token alone. The windows are ``predict``'s (overlapping, Gaussian-weighted:
``geomed_ssl.models.probe.encoder_points``) and only windows holding labelled pixels are run. Classification: per
image, the mean and the standard deviation over the image of each tapped block's tokens, concatenated (the spread
matters: band means and stds alone are a strong baseline), and the encoder's normed CLS token, the only output the
two-view and self-distillation methods train (docs/label_efficiency.md, "Which token the probe reads").

For the ``blocks`` split the features of training pixels are computed from the image with its test blocks blanked
(``allowed`` False set to 0, the normalised mean), so no training window sees a test-block pixel; so are the
``propagate`` protocol's unlabelled nodes, drawn inside the training blocks only. The ``images`` split's ``allowed``
maps are whole images (all True or all False): training pixels see their own image, nodes lie in training images.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch

from geomed_ssl.compare.task import Task
from geomed_ssl.cpus import physical_memory
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.models.probe import PointFn, encoder_points
from geomed_ssl.models.propagate import sample_nodes


class SegmentFeatures:
    """Per-pixel features of a segmentation task: ``point_fn(image, points (n, nd), allowed) -> (n, F)`` applied
    per image; the full view (nothing blanked) is computed once for the ``needed`` rows (sorted: those some split
    trains or tests on; default all) and cached."""

    def __init__(self, task: Task, load: Callable[[int], np.ndarray], point_fn: PointFn,
                 needed: np.ndarray | None = None):
        self.task, self.load, self.point_fn = task, load, point_fn
        self.needed = np.arange(task.values.size) if needed is None else np.asarray(needed)
        self._all: np.ndarray | None = None
        self._nodes: np.ndarray | None = None

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
        rows = np.asarray(rows)
        if allowed is not None and not all(allowed[f].all() for f in np.unique(self.task.files[rows])):
            return self._compute(rows, allowed)  # blanked views (images wholly allowed: the full view, cached)
        if self._all is None:
            self._all = self._compute(self.needed, None)
        return self._all[np.searchsorted(self.needed, rows)]

    def nodes(self, max_nodes: int, seed: int, allowed: list[np.ndarray] | None = None) -> np.ndarray:
        """(m, F) features of the ``propagate`` protocol's unlabelled nodes: every pixel of the images (inside
        ``allowed``, from the view it leaves), or a random sample of ``max_nodes`` (the same for every split
        without ``allowed``; computed once then)."""
        if allowed is None and self._nodes is not None:
            return self._nodes
        picks = sample_nodes(self.task.shapes, max_nodes, seed, allowed)
        parts = [self.point_fn(self.load(f), np.stack(np.unravel_index(p, self.task.shapes[f]), axis=1),
                               None if allowed is None else allowed[f]) for f, p in enumerate(picks) if p.size]
        out = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
        if allowed is None:
            self._nodes = out
        return out


class ImageFeatures:
    """Per-image features of a classification task: ``image_fn(i) -> (F,)``, all computed once."""

    def __init__(self, task: Task, image_fn: Callable[[int], np.ndarray]):
        self.task, self.image_fn = task, image_fn
        self._all: np.ndarray | None = None

    def features(self, rows: np.ndarray, allowed: Any = None) -> np.ndarray:
        if self._all is None:
            self._all = np.stack([self.image_fn(i) for i in range(len(self.task.records))]).astype(np.float32)
        return self._all[rows]

    def nodes(self, max_nodes: int, seed: int, allowed: Any = None) -> np.ndarray:
        """(m, F) features of the ``propagate`` protocol's unlabelled nodes: every image of the task (test images
        included, never their labels), or a random sample of ``max_nodes``."""
        rows = sample_nodes([(len(self.task.records),)], max_nodes, seed)[0]
        return self.features(rows)


# -- encoders ---------------------------------------------------------------------------------------------------
# (per pixel: geomed_ssl.models.probe.encoder_points, shared with finetune's probe head)
def encoder_image_fn(encoder: ViTEncoder, layers: list[int], load: Callable[[int], np.ndarray]
                     ) -> Callable[[int], np.ndarray]:
    """Per image: the mean and the standard deviation of each tapped block's tokens and the normed CLS token,
    concatenated ((2 * L + 1) * D,)."""
    device = encoder.cls_token.device

    def fn(i: int) -> np.ndarray:
        with torch.no_grad():  # one pass: the tapped blocks' raw outputs and the normed final tokens
            out, feats, _ = encoder.forward_with_taps(torch.from_numpy(load(i))[None].to(device), layers)
        pooled = [torch.cat([f.mean(dim=1), f.std(dim=1, unbiased=False)], dim=1) for f in feats]
        return torch.cat([*pooled, out[:, 0]], dim=1)[0].cpu().numpy()

    return fn


def encoder_features(task: Task, encoder: ViTEncoder, layers: list[int], load: Callable[[int], np.ndarray],
                     needed: np.ndarray | None = None) -> SegmentFeatures | ImageFeatures:
    """The frozen features of ``encoder`` on the task, ``load(i)`` giving image ``i`` as the encoder reads it."""
    encoder.eval()
    if task.kind == "segment":
        return SegmentFeatures(task, load, encoder_points(encoder, layers), needed)
    return ImageFeatures(task, encoder_image_fn(encoder, layers, load))


def memo(load: Callable[[int], np.ndarray], max_bytes: int | None = None) -> Callable[[int], np.ndarray]:
    """``load`` with its results kept while they hold under ``max_bytes`` together (default: an eighth of this
    machine's memory), the least recently used dropped first, before the next read when it would not fit: the
    images of a small task are read once per feature set, and a large one holds one scene at a time."""
    limit = max_bytes if max_bytes is not None else physical_memory() // 8
    cache: OrderedDict[int, np.ndarray] = OrderedDict()
    largest = 0

    def fn(i: int) -> np.ndarray:
        nonlocal largest
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        while cache and sum(a.nbytes for a in cache.values()) + largest > limit:
            cache.popitem(last=False)
        image = cache[i] = load(i)
        largest = max(largest, image.nbytes)
        return image

    return fn


def check_feature_memory(rows: int, dims: int, name: str, unit: str) -> None:
    """A DataError before frozen features of ``rows`` samples x ``dims`` float32 would take over half the memory."""
    need = rows * dims * 4
    total = physical_memory(default=0)
    if total and need > total / 2:
        from geomed_ssl.errors import DataError

        raise DataError(f"the frozen features of {name} for {rows} {unit}s (the labelled ones and propagate's "
                        f"nodes) x {dims} dims need {need / 2**30:.1f} GiB, over half of this machine's "
                        f"{total / 2**30:.0f} GiB; test on a subsample with --set labels.test_fraction=0.1 (or "
                        "smaller), lower finetune.probe_nodes for propagate, or use --protocol finetune.")
