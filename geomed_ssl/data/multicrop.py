"""DINO multi-crop views: two global and ``n_local`` local crops of one window, for any band count, 2D or 3D.

2D: albumentations geometry (random resized crop, flips, rot90) plus our own band-safe intensity ops on z-scored
data (per-band brightness/contrast and gamma, blur, noise, solarize about a threshold, band dropout); RGB colour
jitter / grayscale have no meaning on 13 or 200 bands. 3D: MONAI random crops at two scales resized to the
global / local sizes, flips, rot90, intensity scale/shift, noise, smoothing. DINO's asymmetric pattern is kept:
global crop 1 always blurred, global crop 2 rarely blurred but sometimes solarised, local crops blurred half the
time. Every random choice comes from the ``rng`` passed in; the valid mask follows the geometry (nearest).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from geomed_ssl.config import as_tuple
from geomed_ssl.errors import ConfigError


# ---- band-safe intensity ops on (C, *S) float32 z-scored arrays -------------------------------------------------
def _per_band(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v.reshape(-1, *([1] * (x.ndim - 1))).astype(np.float32)  # (C, 1, ...)


def band_jitter(x: np.ndarray, rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4) -> np.ndarray:
    """Per-band contrast about the band mean and brightness offset (in z units)."""
    c = x.shape[0]
    mean = x.reshape(c, -1).mean(axis=1)
    gain = _per_band(x, rng.uniform(1 - contrast, 1 + contrast, c))
    shift = _per_band(x, rng.uniform(-brightness, brightness, c))
    m = _per_band(x, mean)
    return (x - m) * gain + m + shift


def band_gamma(x: np.ndarray, rng: np.random.Generator, gamma: tuple[float, float] = (0.7, 1.5)) -> np.ndarray:
    """Per-band gamma on the band rescaled to [0, 1] by its min/max, mapped back: finite on any real input."""
    c = x.shape[0]
    flat = x.reshape(c, -1)
    lo, hi = _per_band(x, flat.min(axis=1)), _per_band(x, flat.max(axis=1))
    span = np.maximum(hi - lo, 1e-6)
    g = _per_band(x, np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]), c)))
    u = np.clip((x - lo) / span, 0.0, 1.0)
    return np.power(u, g) * span + lo


def gaussian_blur(x: np.ndarray, rng: np.random.Generator, sigma: tuple[float, float] = (0.1, 1.5)) -> np.ndarray:
    """The same isotropic Gaussian blur on every band (sigma in pixels)."""
    s = float(rng.uniform(*sigma))
    return gaussian_filter(x, sigma=(0.0,) + (s,) * (x.ndim - 1), mode="reflect").astype(np.float32)


def gaussian_noise(x: np.ndarray, rng: np.random.Generator, std: tuple[float, float] = (0.0, 0.1)) -> np.ndarray:
    return x + rng.normal(0.0, float(rng.uniform(*std)), size=x.shape).astype(np.float32)


def solarize(x: np.ndarray, rng: np.random.Generator, threshold: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Mirror values above a per-band threshold ``t`` (z units): ``x -> 2t - x``; ``1 - x`` above 0.5 on [0, 1]
    data generalised, with no clamping and no assumed range."""
    t = _per_band(x, rng.uniform(*threshold, x.shape[0]))
    return np.where(x >= t, 2 * t - x, x)


def band_dropout(x: np.ndarray, rng: np.random.Generator, p: float = 0.2) -> np.ndarray:
    """Set whole bands to 0 (their mean) with probability ``p`` each; at least one band survives."""
    c = x.shape[0]
    drop = rng.random(c) < p
    if drop.all():
        drop[rng.integers(c)] = False
    return np.where(_per_band(x, drop) > 0, np.float32(0), x)


@dataclass
class IntensityProbs:
    """Probabilities of the intensity ops for one kind of crop."""

    jitter: float = 0.8
    gamma: float = 0.3
    blur: float = 0.5
    noise: float = 0.2
    solarize: float = 0.0
    dropout: float = 0.2


GLOBAL1, GLOBAL2, LOCAL = IntensityProbs(blur=1.0), IntensityProbs(blur=0.1, solarize=0.2), IntensityProbs(blur=0.5)


def band_intensity(x: np.ndarray, rng: np.random.Generator, p: IntensityProbs) -> np.ndarray:
    """Apply the 2D intensity ops with the probabilities ``p`` (fixed order: jitter, gamma, blur, noise,
    solarize, band dropout); float32 in and out."""
    x = x.astype(np.float32, copy=False)
    if rng.random() < p.jitter:
        x = band_jitter(x, rng)
    if rng.random() < p.gamma:
        x = band_gamma(x, rng)
    if rng.random() < p.blur:
        x = gaussian_blur(x, rng)
    if rng.random() < p.noise:
        x = gaussian_noise(x, rng)
    if rng.random() < p.solarize:
        x = solarize(x, rng)
    if x.shape[0] > 1 and rng.random() < p.dropout:
        x = band_dropout(x, rng)
    return x.astype(np.float32, copy=False)


# ---- geometry -----------------------------------------------------------------------------------------------------
class _Crop2D:
    def __init__(self, size: tuple[int, ...], scale: tuple[float, float], ratio: tuple[float, float]):
        import albumentations as A
        import cv2

        ops: list[Any] = [
            A.RandomResizedCrop(size=tuple(size), scale=tuple(scale), ratio=tuple(ratio),
                                interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ]
        if size[0] == size[1]:
            ops.append(A.RandomRotate90(p=1.0))
        self.compose = A.Compose(ops, p=1.0)

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                 probs: IntensityProbs) -> tuple[torch.Tensor, torch.Tensor]:
        self.compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        out = self.compose(image=np.ascontiguousarray(np.moveaxis(image, 0, -1)), mask=valid.astype(np.uint8))
        img = out["image"] if out["image"].ndim == 3 else out["image"][..., None]  # (h, w, C)
        img = band_intensity(np.moveaxis(img, -1, 0), rng, probs)  # (C, h, w)
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(np.ascontiguousarray(out["mask"] > 0))


class _Crop3D:
    def __init__(self, size: tuple[int, ...], scale: tuple[float, float], blur_p: float):
        from monai.transforms import (Compose, RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandRotate90d,
                                      RandScaleCropd, RandScaleIntensityd, RandShiftIntensityd, Resized)

        keys = ["image", "valid"]
        ops: list[Any] = [
            RandScaleCropd(keys, roi_scale=scale[0] ** (1 / 3), max_roi_scale=scale[1] ** (1 / 3), random_size=True),
            Resized(keys, spatial_size=tuple(size), mode=("trilinear", "nearest")),
            *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
        ]
        if size[1] == size[2]:
            ops.append(RandRotate90d(keys, prob=0.5, spatial_axes=(1, 2)))
        ops += [
            RandScaleIntensityd("image", factors=0.2, prob=0.8),
            RandShiftIntensityd("image", offsets=0.2, prob=0.8),
            RandGaussianNoised("image", prob=0.2, std=0.05),
            RandGaussianSmoothd("image", sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0), prob=blur_p),
        ]
        self.compose = Compose(ops)

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                 probs: IntensityProbs) -> tuple[torch.Tensor, torch.Tensor]:
        self.compose.set_random_state(seed=int(rng.integers(2**32)))
        out = self.compose({
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),  # (C, D, H, W)
            "valid": torch.from_numpy(valid[None].astype(np.float32)),  # (1, D, H, W)
        })
        img = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float().contiguous()
        ok = (torch.as_tensor(out["valid"]).as_subclass(torch.Tensor)[0] > 0.5).contiguous()
        return img, ok


class MultiCropView:
    """``(image (C, *S) np, valid (*S) np, rng) -> {"views": {"global": [2 x (C, *G)], "local": [n x (C, *L)]},
    "valid": {"global": [...], "local": [...]}}`` (float32 images, bool masks; torch tensors)."""

    def __init__(
        self,
        global_size: tuple[int, ...],
        local_size: tuple[int, ...],
        n_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        spatial_dims: int = 2,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ConfigError(f"multi-crop views need spatial_dims 2 or 3, got {spatial_dims}.")
        for name, sc in (("global_crop_scale", global_scale), ("local_crop_scale", local_scale)):
            if not 0 < sc[0] <= sc[1] <= 1:
                raise ConfigError(f"data.{name} must be [min, max] with 0 < min <= max <= 1, got {list(sc)}.")
        if n_local < 0:
            raise ConfigError(f"data.n_local_crops must be >= 0, got {n_local}.")
        self.global_size = as_tuple(list(global_size), spatial_dims, "data.global_crop_size")
        self.local_size = as_tuple(list(local_size), spatial_dims, "data.local_crop_size")
        self.n_local, self.spatial_dims = int(n_local), spatial_dims
        if spatial_dims == 2:
            self._global = _Crop2D(self.global_size, global_scale, ratio)
            self._local = _Crop2D(self.local_size, local_scale, ratio)
            self._global2 = self._global
        else:
            self._global = _Crop3D(self.global_size, global_scale, blur_p=GLOBAL1.blur)
            self._global2 = _Crop3D(self.global_size, global_scale, blur_p=GLOBAL2.blur)
            self._local = _Crop3D(self.local_size, local_scale, blur_p=LOCAL.blur)

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        image = np.asarray(image, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
        if image.ndim != self.spatial_dims + 1 or valid.shape != image.shape[1:]:
            raise ValueError(f"expected image (C, *S) with {self.spatial_dims} spatial axes and valid (*S); got "
                             f"{image.shape} and {valid.shape}.")
        crops = [self._global(image, valid, rng, GLOBAL1), self._global2(image, valid, rng, GLOBAL2)]
        crops += [self._local(image, valid, rng, LOCAL) for _ in range(self.n_local)]
        imgs, masks = [c[0] for c in crops], [c[1] for c in crops]
        return {"views": {"global": imgs[:2], "local": imgs[2:]}, "valid": {"global": masks[:2], "local": masks[2:]}}


def build_multicrop(data_cfg: Any, spatial_dims: int, patch_size: Any = None) -> MultiCropView:
    """A :class:`MultiCropView` from the recipe's ``data`` section (keys missing there take the defaults below).

    ``global_crop_size`` defaults to ``data.patch_size``; ``local_crop_size`` to half of it rounded down to a
    multiple of ``patch_size`` (the model's token patch), at least one patch.
    """
    window = as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    g = getattr(data_cfg, "global_crop_size", None)
    global_size = window if g is None else as_tuple(g, spatial_dims, "data.global_crop_size")
    loc = getattr(data_cfg, "local_crop_size", None)
    if loc is None:
        p = as_tuple(patch_size if patch_size is not None else 1, spatial_dims, "model.patch_size")
        local_size = tuple(max(pi, (w // 2) // pi * pi) for w, pi in zip(global_size, p))
    else:
        local_size = as_tuple(loc, spatial_dims, "data.local_crop_size")
    return MultiCropView(
        global_size,
        local_size,
        n_local=int(getattr(data_cfg, "n_local_crops", 6)),
        global_scale=tuple(getattr(data_cfg, "global_crop_scale", (0.4, 1.0))),
        local_scale=tuple(getattr(data_cfg, "local_crop_scale", (0.05, 0.4))),
        spatial_dims=spatial_dims,
    )
