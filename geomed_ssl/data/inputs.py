"""Arrays in file units -> the normalised input an encoder was trained on, outside the datasets.

The same steps as the pretraining pipeline (:class:`geomed_ssl.views.datasets.PretrainDataset`) after its read:
volumes get the run's intensity preprocessing (CT window / MR percentile scaling), then every band is clipped to
[p1, p99] and z-scored with the encoder's statistics (:func:`geomed_ssl.data.stats.normalize`); pixels that are
nodata (or NaN) in every band become 0 and are marked invalid.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.data.intensity import preprocess_intensity
from geomed_ssl.errors import ConfigError, DataError

VOLUME_DEFAULTS = {"intensity": "auto", "ct_window": [-1000.0, 1000.0]}


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (moved to the CPU)."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def prepare_input(array: Any, stats: dict[str, Any] | None, spatial_dims: int, nodata: float | None = None,
                  data: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (C, *S) or (B, C, *S) in file units -> (float32 (B, C, *S) normalised, bool valid (B, *S)).

    ``stats``: the encoder's statistics (``enc.config.stats``); ``nodata``: the files' nodata value (default: the
    run's ``data.nodata``); ``data``: the run's data settings (volumes: ``intensity``, ``ct_window``). A volume is
    scaled on its own values (MR percentiles, the CT/MR decision), so pass whole volumes, in RAS orientation and at
    the run's ``data.spacing``, as the volume reader gives them.
    """
    if not stats:
        raise ConfigError("this encoder carries no normalisation statistics (config.stats is empty); load it from "
                          "an export written by `geomed-ssl pretrain` or `finetune`.")
    band_stats = BandStats.from_dict(stats, source="encoder config stats")
    arr = as_numpy(array)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"preprocess: the array holds {arr.dtype} values; give the bands' real values as read from "
                        "the files (numbers, not complex: SAR users take the amplitude or intensity first).")
    if arr.ndim == spatial_dims + 1:
        arr = arr[None]
    if arr.ndim != spatial_dims + 2:
        axes = "H, W" if spatial_dims == 2 else "D, H, W"
        raise DataError(f"preprocess: expected an array of shape (C, {axes}) or (B, C, {axes}) for this "
                        f"{spatial_dims}D encoder, got {tuple(arr.shape)}.")
    settings = dict(data or {})
    if nodata is None:
        nodata = settings.get("nodata")
    volume_cfg = SimpleNamespace(**{**VOLUME_DEFAULTS, **{k: v for k, v in settings.items() if v is not None},
                                    "nodata": nodata}) if spatial_dims == 3 else None
    images, masks = [], []
    for sample in arr:  # (C, *S)
        if volume_cfg is not None:
            sample = preprocess_intensity(sample, volume_cfg)
        image, valid = normalize(sample, band_stats, nodata)
        images.append(image)
        masks.append(valid)
    return np.stack(images), np.stack(masks)
