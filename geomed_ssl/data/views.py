"""Views: what a method asks of a sample (MAE: one randomly cropped/flipped view; DINO: multi-crop, later).

A view is a callable ``view(image (C, *spatial) float32 np, valid (*spatial) bool np, rng) -> dict`` returning
torch tensors. Every random choice comes from ``rng`` so a sample stays a pure function of its seed. Geometric
ops work on any band count (2D: albumentations on HWC arrays; 3D: MONAI dictionary transforms) and move the
``valid`` mask with nearest interpolation so it lines up with the image.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch

from geomed_ssl.config import as_tuple
from geomed_ssl.errors import ConfigError

View = Callable[[np.ndarray, np.ndarray, np.random.Generator], dict]
VIEW_KINDS = ("none", "mae")


def _to_tensors(image: np.ndarray, valid: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)),
    }


class IdentityView:
    """No augmentation: the normalised window as tensors (inference, statistics, tests)."""

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        return _to_tensors(image, valid)


class MAEView2D:
    """Random resized crop back to ``size`` + horizontal/vertical flips (+ rot90 when square), any band count."""

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        rot90: bool = True,
    ):
        import albumentations as A
        import cv2

        self.size = tuple(size)
        ops: list[Any] = [
            A.RandomResizedCrop(
                size=self.size,
                scale=tuple(scale),
                ratio=tuple(ratio),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            ),
            A.HorizontalFlip(p=flip_p),
            A.VerticalFlip(p=flip_p),
        ]
        if rot90 and self.size[0] == self.size[1]:
            ops.append(A.RandomRotate90(p=1.0))
        self.compose = A.Compose(ops, p=1.0)

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        # One shared generator for all ops (set_random_seed would give every op the same stream).
        self.compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        hwc = np.ascontiguousarray(np.moveaxis(image, 0, -1), dtype=np.float32)  # (H, W, C)
        out = self.compose(image=hwc, mask=valid.astype(np.uint8))
        img = out["image"]
        if img.ndim == 2:  # single band may come back as (H, W)
            img = img[..., None]
        return _to_tensors(np.moveaxis(img, -1, 0), out["mask"] > 0)  # (C, H, W), (H, W)


class MAEView3D:
    """Random-size crop (volume fraction in ``scale``) resized back to ``size`` + flips on the three axes."""

    def __init__(self, size: tuple[int, int, int], scale: tuple[float, float] = (0.2, 1.0), flip_p: float = 0.5):
        from monai.transforms import Compose, RandFlipd, RandScaleCropd, Resized

        keys = ["image", "valid"]
        self.size = tuple(size)
        self.compose = Compose(
            [
                RandScaleCropd(
                    keys,
                    roi_scale=scale[0] ** (1 / 3),
                    max_roi_scale=scale[1] ** (1 / 3),
                    random_center=True,
                    random_size=True,
                ),
                Resized(keys, spatial_size=self.size, mode=("trilinear", "nearest")),
                *[RandFlipd(keys, prob=flip_p, spatial_axis=a) for a in range(3)],
            ]
        )

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        self.compose.set_random_state(seed=int(rng.integers(2**32)))
        data = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),  # (C, D, H, W)
            "valid": torch.from_numpy(valid[None].astype(np.float32)),  # (1, D, H, W)
        }
        out = self.compose(data)
        img = torch.as_tensor(out["image"]).float().contiguous()
        ok = torch.as_tensor(out["valid"])[0] > 0.5
        img = img.as_subclass(torch.Tensor) if type(img) is not torch.Tensor else img
        return {"image": img, "valid": ok.as_subclass(torch.Tensor).contiguous()}


def build_views(kind: str, data_cfg: Any, spatial_dims: int, **opts: Any) -> View:
    """The view of ``kind`` for windows of ``data_cfg.patch_size``.

    Options for "mae": ``scale`` (crop area / volume fraction, default (0.2, 1.0)), ``ratio`` (2D aspect,
    default (3/4, 4/3)), ``flip_p`` (0.5), ``rot90`` (2D, square windows only; True).
    """
    size = as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    if kind == "none":
        return IdentityView()
    if kind == "mae":
        scale = tuple(opts.get("scale", (0.2, 1.0)))
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"view 'mae': scale must satisfy 0 < min <= max <= 1, got {list(scale)}.")
        if spatial_dims == 2:
            return MAEView2D(
                size,  # type: ignore[arg-type]
                scale=scale,  # type: ignore[arg-type]
                ratio=tuple(opts.get("ratio", (3 / 4, 4 / 3))),  # type: ignore[arg-type]
                flip_p=float(opts.get("flip_p", 0.5)),
                rot90=bool(opts.get("rot90", True)),
            )
        if spatial_dims == 3:
            return MAEView3D(size, scale=scale, flip_p=float(opts.get("flip_p", 0.5)))  # type: ignore[arg-type]
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    raise ConfigError(f"unknown view kind '{kind}'. Valid kinds: {', '.join(VIEW_KINDS)} (dino comes with issue 3).")

