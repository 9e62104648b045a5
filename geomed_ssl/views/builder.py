"""Views: what a method asks of a sample, built by one builder from the :class:`ViewSpec` the method declares.

A view is a callable ``view(image (C, *spatial) float32 np, valid (*spatial) bool np, rng) -> dict`` returning
torch tensors. One spec covers every method: one crop (MAE and other masked-image methods), two augmented global
crops (SimCLR, MoCo, BYOL, SimSiam, ...), two global crops plus ``data.n_local_crops`` local crops (DINO, SwAV),
two unresized crops at a known pixel offset (:class:`ShiftedPairView`: dense methods that match the pixels both
crops cover, VICRegL-style), or the window untouched. Every crop goes through the same steps, each random choice drawn from ``rng`` in a fixed
order, so a sample stays a pure function of its seed:

1. :func:`resized_crop`, the one random-resized-crop primitive for 2D and 3D: a crop covering a fraction ~U(scale)
   of the window's area (2D) or volume (3D), of log-uniform aspect, resized to the crop size;
2. a flip per spatial axis (``augment.flip``) and, on square 2D crops, quarter turns (``augment.rot90``);
3. band-safe intensity ops (:mod:`geomed_ssl.views.augment`) when the spec asks for them.

Geometry is band-count-agnostic: 2D resizes run ``cv2.resize`` on each band plane (no HWC transposes;
albumentations splits HWC images into 4-band chunks and was 3-5x slower at 13 and 200 bands), 3D resizes run
``torch.nn.functional.interpolate`` (MONAI's dictionary transforms spent ~8 ms of metadata bookkeeping per patch).
The ``valid`` mask follows the same geometry with nearest interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from geomed_ssl.config import as_tuple
from geomed_ssl.views.augment import Intensity, IntensityProbs, over_valid
from geomed_ssl.errors import ConfigError

View = Callable[[np.ndarray, np.ndarray, np.random.Generator], dict]
DEFAULT_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ViewSpec:
    """What views of each sample a method needs; :func:`build_views` reads it with the recipe's ``data:`` (crop
    sizes and scales) and ``augment:`` (flips, rotations, intensity ops) sections.

    ``crops``: global crops of ``data.global_crop_size`` (null: the window), each covering a fraction ``scale`` of
    the window (null: ``data.global_crop_scale``). ``local_crops``: also ``data.n_local_crops`` crops of
    ``data.local_crop_size`` covering ``data.local_crop_scale`` (multi-crop). ``intensity``: band-safe intensity
    ops on every crop (false: geometry only). ``asymmetric``: BYOL's pattern, the first global crop always blurred,
    the second rarely but sometimes solarised. ``geometry=False``: the window as it is (no crop, flip or turn).
    ``orientation=False``: crops keep the window's orientation (no flips or quarter turns, whatever ``augment:``
    says), for tasks that predict it (rotation).
    ``shift`` > 0 (with ``crops=2``): the two global crops are cut from the window unresized, unflipped and unturned
    (the method undoes its own geometry), their origins ``shift`` px apart at most per axis (uniform), and the batch
    also holds ``offset`` (B, n_dims) long = origin of crop 2 - origin of crop 1: pixel ``p`` of crop 1 is pixel
    ``p - offset`` of crop 2. Crops are ``data.global_crop_size`` (null: the window less ``shift``).

    One crop and no local crops give a batch ``{"image": (B, C, *S), "valid": (B, *S)}``; anything more gives
    ``{"views": {"global": [crops x (B, C, *G)], "local": [n x (B, C, *L)]}, "valid": {same keys, (B, *S) masks}}``.
    """

    crops: int = 1
    local_crops: bool = False
    intensity: bool = True
    asymmetric: bool = False
    scale: tuple[float, float] | None = None
    geometry: bool = True
    shift: int = 0
    orientation: bool = True

    def __post_init__(self) -> None:
        if self.crops < 1:
            raise ValueError(f"ViewSpec.crops must be at least 1, got {self.crops}")
        if self.shift < 0 or (self.shift and (self.crops != 2 or self.local_crops or not self.geometry)):
            raise ValueError(f"ViewSpec.shift needs crops=2, no local crops and geometry, and must be >= 0; got "
                             f"shift={self.shift}, crops={self.crops}")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"ViewSpec.scale must satisfy 0 < min <= max <= 1, got {self.scale}")

    @property
    def single(self) -> bool:
        """One crop per sample, batched as ``image`` / ``valid``."""
        return self.crops == 1 and not self.local_crops

    def describe(self) -> str:
        """The views in words (``geomed-ssl methods``, docs/methods.md)."""
        if not self.geometry:
            return "the window as it is"
        if self.shift:
            return (f"2 unresized crops whose origins differ by up to {self.shift} px per axis (the offset is known)"
                    + (", band-safe intensity augment" if self.intensity else ""))
        what = "one crop" if self.crops == 1 else f"{self.crops} global crops"
        scale = (f"{self.scale[0]:g}-{self.scale[1]:g} of the area / volume" if self.scale
                 else "data.global_crop_scale")
        text = f"{what} ({scale})"
        if self.local_crops:
            text += " + data.n_local_crops local crops"
        if self.orientation:
            text += ", flips / rot90"
        if self.intensity:
            text += ", band-safe intensity augment" + (" (asymmetric blur / solarize)" if self.asymmetric else "")
        return text


IDENTITY = ViewSpec(geometry=False, intensity=False)
PRESETS: dict[str, ViewSpec] = {  # names for callers that are not methods (statistics, previews, tests)
    "none": IDENTITY,
    "mae": ViewSpec(intensity=False, scale=(0.2, 1.0)),
    "dino": ViewSpec(crops=2, local_crops=True, asymmetric=True),
}
VIEW_KINDS = tuple(PRESETS)


def _to_tensors(image: np.ndarray, valid: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)),
    }


def sample_crop(
    shape: tuple[int, ...], scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Random crop ``(starts, sizes)`` of an array with spatial ``shape``.

    The crop covers a fraction ~U(scale) of the area (2D) or volume (3D); its aspect (relative to ``shape``) is
    log-uniform in ``ratio`` (2D: width/height as in MAE/torchvision; 3D: each axis jittered by up to sqrt(ratio),
    product kept). After 10 failed tries the whole array is taken.
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


def resized_crop(image: np.ndarray, valid: np.ndarray, size: tuple[int, ...], scale: tuple[float, float],
                 ratio: tuple[float, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The random resized crop, 2D and 3D alike: ``image`` (C, *S), ``valid`` (*S) -> (C, *size), (*size) bool;
    the crop's area / volume fraction and aspect as :func:`sample_crop` draws them."""
    starts, sizes = sample_crop(image.shape[1:], scale, ratio, rng)
    box = tuple(slice(s, s + n) for s, n in zip(starts, sizes))
    crop_ok = valid[box]
    if crop_ok.all() or not crop_ok.any() or tuple(sizes) == tuple(size):
        img = resize(image[(slice(None), *box)], size)  # (C, *size)
    else:  # weighed by validity, so the nodata fill (0) is not blended into the valid pixels beside it
        img = over_valid(lambda a: resize(a, size), image[(slice(None), *box)], crop_ok, np.float32(0))
    ok = resize(crop_ok[None].astype(np.uint8), size, nearest=True)[0] > 0  # (*size)
    return img, ok


def flip_rotate(image: np.ndarray, valid: np.ndarray, rng: np.random.Generator, flip_p: float = 0.5,
                rot90: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A flip per spatial axis with probability ``flip_p``, then (``rot90``, square 2D only) 0-3 quarter turns."""
    nd = valid.ndim
    flips = [a for a in range(nd) if rng.random() < flip_p]
    if flips:
        image, valid = np.flip(image, [a + 1 for a in flips]), np.flip(valid, flips)
    if rot90 and nd == 2 and valid.shape[0] == valid.shape[1]:
        k = int(rng.integers(4))
        image, valid = np.rot90(image, k, axes=(1, 2)), np.rot90(valid, k, axes=(0, 1))
    return image, valid


@dataclass(frozen=True)
class CropSet:
    """Crops of one size: how many, what fraction of the window each covers, and their intensity roles."""

    size: tuple[int, ...]
    scale: tuple[float, float]
    roles: tuple[str, ...]  # one per crop: "none" (geometry only) or an Intensity.probs role


def _date_sources(image: np.ndarray, valid: np.ndarray, second: tuple[np.ndarray, np.ndarray] | None,
                  spatial_dims: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(image, valid), (second date's image, valid)] (the window itself twice without ``second``), after checking
    each is (C, *spatial) with a matching mask, both of one window."""
    sources = [(image, valid), second or (image, valid)]
    for img, ok in sources:
        if img.ndim != spatial_dims + 1 or ok.shape != img.shape[1:] or ok.shape != valid.shape:
            raise ValueError(f"view expects images (C, *{spatial_dims} spatial) of one window and matching valid "
                             f"masks, got {img.shape} and {ok.shape}")
    return sources


class IdentityView:
    """No augmentation: the normalised window as tensors (inference, statistics, tests)."""

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        return _to_tensors(image, valid)


class CropView:
    """Global (and local) crops of a window, each a :func:`resized_crop` then :func:`flip_rotate` then (per its
    role) intensity ops. One global crop and no local ones give ``{"image", "valid"}``; otherwise
    ``{"views": {"global", "local"}, "valid": {"global", "local"}}`` (see :class:`ViewSpec`).

    ``second`` (two or more global crops): the same window read from another file on the same grid (another date,
    ``data.date_pairs``); global and local crops alternate between the two (crop 1 from this date, crop 2 from the
    other, ...), so the positives are one place seen at two dates (seasonal positives, as in SeCo / SSL4EO-S12)."""

    def __init__(self, global_crops: CropSet, local_crops: CropSet | None = None,
                 ratio: tuple[float, float] = DEFAULT_RATIO, flip_p: float = 0.5, rot90: bool = True,
                 intensity: Intensity | None = None) -> None:
        self.global_crops, self.local_crops = global_crops, local_crops
        self.ratio, self.flip_p, self.rot90 = tuple(ratio), float(flip_p), bool(rot90)
        self.intensity = intensity or Intensity()
        self.spatial_dims = len(global_crops.size)
        self.pairs = len(global_crops.roles) >= 2  # PretrainDataset may pass ``second``
        self._probs: dict[str, IntensityProbs] = {}

    def crop(self, image: np.ndarray, valid: np.ndarray, crops: CropSet, role: str,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One crop of ``crops``' size and scale, with the intensity ops of ``role``."""
        img, ok = resized_crop(image, valid, crops.size, crops.scale, self.ratio, rng)
        img, ok = flip_rotate(img, ok, rng, self.flip_p, self.rot90)
        if role != "none":
            probs = self._probs.setdefault(role, self.intensity.probs(role))
            img = self.intensity(np.ascontiguousarray(img), rng, probs, np.ascontiguousarray(ok))
        return img, ok

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                 second: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        if second is not None and not self.pairs:
            raise ValueError("a second date needs a view of two or more global crops")
        sources = _date_sources(image, valid, second, self.spatial_dims)
        g = [self.crop(*sources[k % 2], self.global_crops, r, rng) for k, r in enumerate(self.global_crops.roles)]
        if self.local_crops is None and len(g) == 1:
            return _to_tensors(*g[0])
        loc = [self.crop(*sources[k % 2], self.local_crops, r, rng) for k, r in enumerate(self.local_crops.roles)] \
            if self.local_crops else []
        g_t, l_t = [_to_tensors(*c) for c in g], [_to_tensors(*c) for c in loc]
        return {"views": {"global": [t["image"] for t in g_t], "local": [t["image"] for t in l_t]},
                "valid": {"global": [t["valid"] for t in g_t], "local": [t["valid"] for t in l_t]}}


class MAEView(CropView):
    """One random resized crop back to ``size`` + a flip per spatial axis (+ rot90 for square 2D windows)."""

    def __init__(self, size: tuple[int, ...], scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = DEFAULT_RATIO, flip_p: float = 0.5, rot90: bool = True):
        super().__init__(CropSet(tuple(size), tuple(scale), ("none",)), None, ratio, flip_p, rot90)
        self.size, self.scale = tuple(size), tuple(scale)


class ShiftedPairView:
    """Two crops of ``size`` cut unresized from the window, at origins whose difference (the ``offset``, crop 2 minus
    crop 1) is uniform in [-shift, shift] per axis, each with its own intensity ops (``intensity``; None: none).
    No flips or turns: methods that match pixels apply and undo their own. 2D and 3D alike.

    ``second``: the same window read from another file on the same grid (another date, ``data.date_pairs``); crop 2
    is then cut from it, so the pixels the crops share are one place seen at two dates."""

    pairs = True  # PretrainDataset may pass ``second``

    def __init__(self, size: tuple[int, ...], shift: int, intensity: Intensity | None = None) -> None:
        self.size, self.shift, self.intensity = tuple(size), int(shift), intensity
        self._probs = intensity.probs("view") if intensity is not None else None

    def __call__(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                 second: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        sources = _date_sources(image, valid, second, len(self.size))
        room = [w - s for w, s in zip(valid.shape, self.size)]  # free origins per axis, >= shift (build_views)
        offset = [int(rng.integers(-min(self.shift, r), min(self.shift, r) + 1)) for r in room]
        o1 = [int(rng.integers(max(0, -d), r - max(0, d) + 1)) for d, r in zip(offset, room)]
        out = []
        for origin, (src, src_ok) in zip((o1, [a + d for a, d in zip(o1, offset)]), sources):
            box = tuple(slice(a, a + s) for a, s in zip(origin, self.size))
            img, ok = src[(slice(None), *box)], src_ok[box]
            if self.intensity is not None:
                img = self.intensity(np.ascontiguousarray(img), rng, self._probs, ok)
            out.append(_to_tensors(img, ok))
        return {"views": {"global": [t["image"] for t in out], "local": []},
                "valid": {"global": [t["valid"] for t in out], "local": []},
                "offset": torch.tensor(offset, dtype=torch.long)}


def _shifted_pair(spec: ViewSpec, data_cfg: Any, spatial_dims: int, patch_size: Any,
                  intensity: Intensity | None) -> ShiftedPairView:
    """The :class:`ShiftedPairView` of ``spec`` for windows of ``data_cfg.patch_size``, after checking the crops fit
    (window >= crop + shift), overlap (crop > shift) and hold whole tokens (multiples of ``patch_size``)."""
    window = as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    g = getattr(data_cfg, "global_crop_size", None)
    crop = tuple(w - spec.shift for w in window) if g is None else as_tuple(g, spatial_dims, "data.global_crop_size")
    key = "data.patch_size less the shift" if g is None else "data.global_crop_size"
    if any(c <= spec.shift for c in crop):
        raise ConfigError(f"{key} {list(crop)} must exceed the crop shift {spec.shift} px (method.max_shift) so the "
                          f"two crops share pixels; make the crops larger or the shift smaller.")
    if any(c + spec.shift > w for c, w in zip(crop, window)):
        raise ConfigError(f"data.patch_size {list(window)} cannot hold two {list(crop)} crops shifted by up to "
                          f"{spec.shift} px (method.max_shift); make data.patch_size at least "
                          f"{[c + spec.shift for c in crop]} or the crops / shift smaller.")
    patch = as_tuple(patch_size if patch_size is not None else 1, spatial_dims, "model.patch_size")
    if any(c % p for c, p in zip(crop, patch)):  # the fix is the crop, which a window less the shift never gives
        fit = [c // p * p for c, p in zip(crop, patch)]  # when the token patch does not divide the shift
        if any(f <= spec.shift for f in fit):  # the smallest crops of whole tokens that still share pixels
            fit = [(spec.shift // p + 1) * p for p in patch]
        raise ConfigError(f"{key} {list(crop)} must be a multiple of model.patch_size {list(patch)} (whole tokens "
                          f"map back to pixels); set the crops: --set \"data.global_crop_size={fit}\" (with "
                          f"data.patch_size at least {[f + spec.shift for f in fit]}).")
    return ShiftedPairView(crop, spec.shift, intensity)


def crop_sizes(data_cfg: Any, spatial_dims: int, patch_size: Any = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global, local) crop sizes: ``data.global_crop_size`` (null: the window) and ``data.local_crop_size`` (null:
    half the global crop rounded down to a multiple of ``patch_size``, the model's token patch, at least one)."""
    window = as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    g = getattr(data_cfg, "global_crop_size", None)
    global_size = window if g is None else as_tuple(g, spatial_dims, "data.global_crop_size")
    loc = getattr(data_cfg, "local_crop_size", None)
    if loc is None:
        p = as_tuple(patch_size if patch_size is not None else 1, spatial_dims, "model.patch_size")
        return global_size, tuple(max(pi, (w // 2) // pi * pi) for w, pi in zip(global_size, p))
    return global_size, as_tuple(loc, spatial_dims, "data.local_crop_size")


def _scale(value: Sequence[float], key: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{key} must be [min, max] with 0 < min <= max <= 1, got {[lo, hi]}.")
    return lo, hi


def build_views(spec: ViewSpec | str, data_cfg: Any, spatial_dims: int, augment: Any = None,
                patch_size: Any = None, wavelengths: Sequence[float | None] | None = None, **opts: Any) -> View:
    """The view that ``spec`` (a method's :class:`ViewSpec`, or a preset name: ``none``, ``mae``, ``dino``) asks
    for, for windows of ``data_cfg.patch_size``.

    ``augment``: the recipe's ``augment:`` section (flips, rot90, crop aspect, intensity strengths; ``None``: the
    defaults); ``patch_size``: the model's token patch (rounds the default local crop size); ``wavelengths``: the
    bands' centre wavelengths (µm), for ``augment.spectral_shift_p``. Options ``scale`` (area / volume fraction of
    a global crop), ``ratio``, ``flip_p`` and ``rot90`` override the spec and ``augment``.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigError(f"unknown view kind '{spec}'. Valid kinds: {', '.join(VIEW_KINDS)}.")
        spec = PRESETS[spec]
    elif getattr(data_cfg, "date_pairs", False) and (spec.crops < 2 or not spec.geometry):
        raise ConfigError("data.date_pairs cuts a method's second crop from another date of the same ground, but this "
                          "method takes one view of each window (masked-image and pretext methods: mae, simmim, beit, "
                          "rotation...); use a method of two crops (vicreg_dense, simclr, vicreg, byol, moco_v2, dino, "
                          "swav...) or set data.date_pairs: false.")
    as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    if not spec.geometry:
        return IdentityView()
    if spec.shift:
        return _shifted_pair(spec, data_cfg, spatial_dims, patch_size,
                             Intensity(augment, wavelengths) if spec.intensity else None)
    get = (lambda k, d: getattr(augment, k, d)) if augment is not None else (lambda k, d: d)
    ratio = tuple(opts.get("ratio", get("crop_ratio", DEFAULT_RATIO)))
    if not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"augment.crop_ratio must satisfy 0 < min <= max, got {list(ratio)}.")
    scale = opts.get("scale", spec.scale or getattr(data_cfg, "global_crop_scale", (0.4, 1.0)))
    scale = _scale(scale, "data.global_crop_scale" if "scale" not in opts and not spec.scale else "view scale")
    global_size, local_size = crop_sizes(data_cfg, spatial_dims, patch_size)
    window = as_tuple(data_cfg.patch_size, spatial_dims, "data.patch_size")
    fits = [("global_crop_size", global_size, "data.patch_size", window)]
    fits += [("local_crop_size", local_size, "data.global_crop_size", global_size)] if spec.local_crops else []
    for key, size, within, limit in fits:
        if any(s > w for s, w in zip(size, limit)):
            raise ConfigError(f"data.{key} {list(size)} does not fit in {within} {list(limit)}: crops are cut from "
                              f"the window; make it at most {list(limit)}.")
    intensity = Intensity(augment, wavelengths) if spec.intensity else None
    if spec.intensity and spec.asymmetric:
        roles = ("global1", "global2") + ("view",) * (spec.crops - 2)
    else:
        roles = ("view" if spec.intensity else "none",) * spec.crops
    local = None
    if spec.local_crops:
        n_local = int(getattr(data_cfg, "n_local_crops", 6))
        local_scale = _scale(getattr(data_cfg, "local_crop_scale", (0.05, 0.4)), "data.local_crop_scale")
        local = CropSet(local_size, local_scale, ("local" if spec.intensity else "none",) * n_local)
    flip_p = float(opts.get("flip_p", 0.5 if get("flip", True) and spec.orientation else 0.0))
    rot90 = bool(opts.get("rot90", get("rot90", True) and spec.orientation))
    return CropView(CropSet(global_size, scale, roles[: spec.crops]), local, ratio, flip_p, rot90, intensity)
