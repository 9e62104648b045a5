"""Multi-crop views (DINO, SwAV): two global and ``n_local`` local crops of one window, any band count, 2D or 3D.

Built from the same pieces as every view (:mod:`geomed_ssl.views.builder`): the one random-resized-crop primitive
(area fraction in 2D, volume fraction in 3D), flips, rot90 on square 2D crops, and the band-safe intensity ops of
:mod:`geomed_ssl.views.augment` (per-band brightness / contrast and gamma, blur, noise, solarize about a threshold,
band dropout). DINO's asymmetric pattern is kept: global crop 1 always blurred, global crop 2 rarely blurred but
sometimes solarised, local crops blurred half the time. Every random choice comes from the ``rng`` passed in; the
valid mask follows the geometry (nearest).
"""

from __future__ import annotations

from typing import Any

from geomed_ssl.config import as_tuple
from geomed_ssl.views.augment import (Intensity, IntensityProbs, band_dropout, band_gamma, band_intensity,  # noqa: F401
                                     band_jitter, gaussian_blur, gaussian_noise, solarize)
from geomed_ssl.views.builder import DEFAULT_RATIO, CropSet, CropView, crop_sizes
from geomed_ssl.errors import ConfigError

GLOBAL1, GLOBAL2, LOCAL = (Intensity().probs(role) for role in ("global1", "global2", "local"))


class MultiCropView(CropView):
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
        ratio: tuple[float, float] = DEFAULT_RATIO,
        augment: Any = None,
        wavelengths: list[float | None] | None = None,
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
        self.n_local = int(n_local)
        get = (lambda k, d: getattr(augment, k, d)) if augment is not None else (lambda k, d: d)
        super().__init__(CropSet(self.global_size, tuple(global_scale), ("global1", "global2")),
                         CropSet(self.local_size, tuple(local_scale), ("local",) * self.n_local), ratio,
                         0.5 if get("flip", True) else 0.0, bool(get("rot90", True)), Intensity(augment, wavelengths))


def build_multicrop(data_cfg: Any, spatial_dims: int, patch_size: Any = None, augment: Any = None,
                    wavelengths: Any = None) -> MultiCropView:
    """A :class:`MultiCropView` from the recipe's ``data`` section (keys missing there take the defaults below) and
    ``augment`` section. ``global_crop_size`` defaults to ``data.patch_size``; ``local_crop_size`` to half of it
    rounded down to a multiple of ``patch_size`` (the model's token patch), at least one patch. ``wavelengths``
    (µm, one per band): for ``augment.spectral_shift_p``."""
    global_size, local_size = crop_sizes(data_cfg, spatial_dims, patch_size)
    return MultiCropView(
        global_size,
        local_size,
        n_local=int(getattr(data_cfg, "n_local_crops", 6)),
        global_scale=tuple(getattr(data_cfg, "global_crop_scale", (0.4, 1.0))),
        local_scale=tuple(getattr(data_cfg, "local_crop_scale", (0.05, 0.4))),
        spatial_dims=spatial_dims,
        ratio=tuple(getattr(augment, "crop_ratio", DEFAULT_RATIO)) if augment is not None else DEFAULT_RATIO,
        augment=augment,
        wavelengths=wavelengths,
    )
