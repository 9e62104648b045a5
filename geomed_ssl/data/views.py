"""Views: what a method asks of a sample (MAE: one randomly cropped/flipped view; DINO: multi-crop).

A view is a callable ``view(image (C, *spatial) float32 np, valid (*spatial) bool np, rng) -> dict`` returning
torch tensors. Every random choice is drawn from ``rng`` in a fixed order, so a sample stays a pure function of
its seed. The geometric ops are dimension-generic and band-count-agnostic: 2D resizes run ``cv2.resize`` on each
band plane (no HWC transposes; albumentations splits HWC images into 4-band chunks and was 3-5x slower at 13
and 200 bands), 3D resizes run ``torch.nn.functional.interpolate`` (MONAI's dictionary transforms spent ~8 ms
of metadata bookkeeping per patch). The ``valid`` mask follows the same geometry with nearest interpolation.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from geomed_ssl.config import as_tuple
from geomed_ssl.errors import ConfigError

View = Callable[[np.ndarray, np.ndarray, np.random.Generator], dict]
VIEW_KINDS = ("none", "mae", "dino")


def _to_tensors(image: np.ndarray, valid: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)),
    }


def sample_crop(
    shape: tuple[int, ...], scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Random crop ``(starts, sizes)`` of an array with spatial ``shape``.

    The crop covers a fraction ~U(scale) of the area/volume; its aspect (relative to ``shape``) is log-uniform in
    ``ratio`` (2D: width/height as in MAE/torchvision; 3D: each axis jittered by up to sqrt(ratio), product kept).
    After 10 failed tries the whole array is taken.
    """
    nd = len(shape)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        frac = rng.uniform(scale[0], scale[1])
        if nd == 2:
            r = rng.uniform(lo, hi)
            logs = np.array([-r / 2, r / 2])  # (rows, cols)
        else:
            logs = rng.uniform(lo / 2, hi / 2, size=nd)
            logs -= logs.mean()
        sizes = [int(round(n * frac ** (1 / nd) * math.exp(a))) for n, a in zip(shape, logs)]
        if all(0 < s <= n for s, n in zip(sizes, shape)):
            starts = tuple(int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sizes))
            return starts, tuple(sizes)
    return (0,) * nd, tuple(shape)


def resize(array: np.ndarray, size: tuple[int, ...], nearest: bool = False) -> np.ndarray:
    """Resize ``array`` (C, *spatial) to ``size``: bilinear/trilinear, or nearest (half-pixel centres)."""
    if tuple(array.shape[1:]) == tuple(size):
        return array
    if len(size) == 2:
        import cv2

        interp = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR
        out = np.empty((array.shape[0], *size), dtype=array.dtype)  # (C, H, W)
        for c in range(array.shape[0]):  # band planes: no HWC transposes, no channel limit
            cv2.resize(array[c], (size[1], size[0]), dst=out[c], interpolation=interp)
        return out
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]  # (1, C, d, h, w)
    mode = "nearest-exact" if nearest else "trilinear"
    kwargs = {} if nearest else {"align_corners": False}
    return torch.nn.functional.interpolate(t, size=tuple(size), mode=mode, **kwargs)[0].numpy()


class IdentityView:
    """No augmentation: the normalised window as tensors (inference, statistics, tests)."""

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        return _to_tensors(image, valid)


class MAEView:
    """Random resized crop back to ``size`` + a flip per spatial axis (+ rot90 for square 2D windows)."""

    def __init__(
        self,
        size: tuple[int, ...],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        rot90: bool = True,
    ):
        self.size, self.scale, self.ratio, self.flip_p = tuple(size), tuple(scale), tuple(ratio), float(flip_p)
        self.rot90 = bool(rot90) and len(self.size) == 2 and self.size[0] == self.size[1]

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        nd = len(self.size)
        if image.ndim != nd + 1 or valid.shape != image.shape[1:]:
            raise ValueError(f"view expects image (C, *{nd} spatial) and a matching valid mask, got "
                             f"{image.shape} and {valid.shape}")
        starts, sizes = sample_crop(image.shape[1:], self.scale, self.ratio, rng)
        box = tuple(slice(s, s + n) for s, n in zip(starts, sizes))
        img = resize(image[(slice(None), *box)], self.size)  # (C, *size)
        ok = resize(valid[box][None].astype(np.uint8), self.size, nearest=True)[0] > 0  # (*size)
        flips = [a for a in range(nd) if rng.random() < self.flip_p]
        if flips:
            img, ok = np.flip(img, [a + 1 for a in flips]), np.flip(ok, flips)
        if self.rot90:
            k = int(rng.integers(4))
            img, ok = np.rot90(img, k, axes=(1, 2)), np.rot90(ok, k, axes=(0, 1))
        return _to_tensors(img, ok)


def build_views(kind: str, data_cfg: Any, spatial_dims: int, **opts: Any) -> View:
    """The view of ``kind`` for windows of ``data_cfg.patch_size``.

    Options for "mae": ``scale`` (area/volume fraction of the crop, default (0.2, 1.0)), ``ratio`` (aspect range,
    default (3/4, 4/3)), ``flip_p`` (per axis, 0.5), ``rot90`` (2D square windows only, True). "dino": the
    ``data.*crop*`` keys (see :func:`geomed_ssl.data.multicrop.build_multicrop`); option ``patch_size`` (the model's
    token patch) rounds the default local crop size.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    size = as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    if kind == "none":
        return IdentityView()
    if kind == "mae":
        scale, ratio = tuple(opts.get("scale", (0.2, 1.0))), tuple(opts.get("ratio", (3 / 4, 4 / 3)))
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"view 'mae': scale must satisfy 0 < min <= max <= 1, got {list(scale)}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"view 'mae': ratio must satisfy 0 < min <= max, got {list(ratio)}.")
        return MAEView(size, scale, ratio, float(opts.get("flip_p", 0.5)), bool(opts.get("rot90", True)))
    if kind == "dino":
        from geomed_ssl.data.multicrop import build_multicrop

        return build_multicrop(data_cfg, spatial_dims, patch_size=opts.get("patch_size"))
    raise ConfigError(f"unknown view kind '{kind}'. Valid kinds: {', '.join(VIEW_KINDS)}.")
