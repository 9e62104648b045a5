"""The baselines that need no encoder, each a feature set for the same classifiers as the encoders:

- ``rf``: segmentation: per-pixel spectra reduced by PCA to 30 components (fewer with fewer bands) plus their 7x7
  (7x7x7) local means; classification: per-image band means and standard deviations. Classified by a random
  forest (200 trees, balanced class weights).
- ``random_conv``: two untrained convolution layers (64 random filters each, fixed seed) on the normalised image:
  per pixel their outputs, per image their means; a linear probe on top.
- ``band_stats`` (classification): per-image band means and standard deviations; a linear probe on top.

Images are normalised with statistics computed on the data itself (as ``finetune --encoder none`` does).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from geomed_ssl.compare.features import ImageFeatures, SegmentFeatures
from geomed_ssl.compare.task import Task
from geomed_ssl.windows.tiling import slab_rows
from geomed_ssl.models.probe import PointFn, blank

RF_COMPONENTS, RF_WINDOW, RF_TREES = 30, 7, 200
CONV_WIDTH, CONV_SEED, CONV_HALO = 64, 0, 3  # halo: rows one output pixel depends on (3x3, then 3x3 dilated 2)
PCA_PIXELS = 100_000


class RandomConv(nn.Module):
    """Two random, untrained conv layers (3x3, then 3x3 dilated by 2) with ReLU, 2D or 3D; fixed seed."""

    def __init__(self, in_chans: int, nd: int, width: int = CONV_WIDTH, seed: int = CONV_SEED):
        super().__init__()
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.c1 = conv(in_chans, width, 3, padding=1)
        self.c2 = conv(width, width, 3, padding=2, dilation=2)
        for layer in (self.c1, self.c2):
            fan_in = layer.weight[0].numel()
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                layer.bias.zero_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, 2 * width, *S): both layers' activations."""
        h1 = torch.relu(self.c1(x))
        return torch.cat([h1, torch.relu(self.c2(h1))], dim=1)


def slab_points(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None, dims: int, halo: int,
                maps_fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray], channels: int) -> np.ndarray:
    """(n, dims) values at ``points`` of per-pixel maps ``maps_fn(image part, allowed part) -> (dims, *part)``
    computed slab by slab along the first axis, each slab with ``halo`` rows of context on either side (the rows
    one output pixel depends on), so exactly as on the whole image while only a slab's ``channels`` maps are held."""
    n0 = image.shape[1]
    rows = slab_rows(image.shape[1:], channels)
    out = np.zeros((points.shape[0], dims), np.float32)
    for s0 in range(0, n0, rows):
        idx = np.flatnonzero((points[:, 0] >= s0) & (points[:, 0] < s0 + rows))
        if idx.size == 0:
            continue
        lo, hi = max(0, s0 - halo), min(n0, s0 + rows + halo)
        maps = maps_fn(image[:, lo:hi], None if allowed is None else allowed[lo:hi])
        p = points[idx].copy()
        p[:, 0] -= lo
        out[idx] = maps[(slice(None), *p.T)].T
    return out


def conv_points(net: RandomConv) -> PointFn:
    """Per-pixel random conv features, computed in slabs (``slab_points``) to bound memory on large scenes."""

    def maps(part: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(blank(part, allowed)))[None])[0].numpy()

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        return slab_points(image, points, allowed, 2 * CONV_WIDTH, CONV_HALO, maps, 2 * CONV_WIDTH)

    return fn


def conv_image_fn(net: RandomConv, load: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    def fn(i: int) -> np.ndarray:
        with torch.no_grad():
            maps = net(torch.from_numpy(load(i))[None])[0]  # (F, *S)
        return maps.flatten(1).mean(dim=1).numpy()

    return fn


def fit_pca(task: Task, load: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean (C,), components (K, C)) of the pixel spectra of every image (a seeded sample of up to 100k pixels;
    no labels are used), K = min(30, C)."""
    rng = np.random.default_rng(0)
    total = sum(int(np.prod(shape)) for shape in task.shapes)
    take = min(1.0, PCA_PIXELS / max(total, 1))
    pixels = []
    for i in range(len(task.records)):  # one image at a time: a large task's scenes are not all held at once
        im = load(i)
        flat = im.reshape(im.shape[0], -1).T  # (P, C)
        pick = rng.random(flat.shape[0]) < take
        pixels.append(flat[pick])
    x = np.concatenate(pixels).astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(RF_COMPONENTS, x.shape[1], vt.shape[0])
    comps = vt[:k]
    comps *= np.where(comps[np.arange(k), np.abs(comps).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # sign fixed
    return mean.astype(np.float32), comps.astype(np.float32)


def box_sum(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Sums of ``a`` over windows of ``size`` centred on each element along ``axis`` (zeros outside), added in a
    fixed order, so a slab of rows gives exactly the whole array's sums at the rows its halo covers."""
    r = size // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    padded = np.pad(a, pad)
    n = a.shape[axis]
    out = np.take(padded, range(0, n), axis=axis)
    for k in range(1, size):
        out += np.take(padded, range(k, k + n), axis=axis)
    return out


def local_mean(maps: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Mean of (K, *S) maps over each pixel's 7x7 (7x7x7) neighbourhood inside the image (and ``allowed``)."""
    weight = np.ones(maps.shape[1:], np.float32) if allowed is None else allowed.astype(np.float32)
    num, den = maps * weight[None], weight
    for axis in range(1, maps.ndim):
        num, den = box_sum(num, axis, RF_WINDOW), box_sum(den, axis - 1, RF_WINDOW)
    return num / np.maximum(den, 1e-6)[None]


def rf_points(mean: np.ndarray, comps: np.ndarray) -> PointFn:
    """Per-pixel principal components and their local means, computed in slabs (``slab_points``)."""
    k = comps.shape[0]

    def maps(part: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        flat = part.reshape(part.shape[0], -1)  # (C, P)
        pcs = (comps @ (flat - mean[:, None])).reshape(k, *part.shape[1:])  # (K, *S)
        return np.concatenate([pcs, local_mean(pcs, allowed)])

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        return slab_points(image, points, allowed, 2 * k, RF_WINDOW // 2, maps, 6 * k)

    return fn


def band_stats_fn(load: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    """Per image: each band's mean and standard deviation (2C,)."""
    def fn(i: int) -> np.ndarray:
        im = load(i)
        flat = im.reshape(im.shape[0], -1)
        return np.concatenate([flat.mean(axis=1), flat.std(axis=1)])

    return fn


def baseline_dims(name: str, in_chans: int) -> int:
    """How many features baseline ``name`` gives per sample (segmentation)."""
    return 2 * CONV_WIDTH if name == "random_conv" else 2 * min(RF_COMPONENTS, in_chans)


def baseline_features(name: str, task: Task, load: Callable[[int], np.ndarray], in_chans: int,
                      needed: np.ndarray | None = None) -> SegmentFeatures | ImageFeatures:
    """The features of baseline ``name`` (rf, random_conv, band_stats) on the task (segmentation: of the
    ``needed`` rows, default all)."""
    if name == "random_conv":
        net = RandomConv(in_chans, task.spatial_dims)
        if task.kind == "segment":
            return SegmentFeatures(task, load, conv_points(net), needed)
        return ImageFeatures(task, conv_image_fn(net, load))
    if task.kind == "classify":  # rf and band_stats: band means and stds, another classifier
        return ImageFeatures(task, band_stats_fn(load))
    mean, comps = fit_pca(task, load)
    return SegmentFeatures(task, load, rf_points(mean, comps), needed)
