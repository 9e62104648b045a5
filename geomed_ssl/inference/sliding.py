"""Sliding-window pieces both predictors share: request checks, the model call (the window origins and blending
weights are :mod:`geomed_ssl.windows.tiling`'s)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from geomed_ssl.errors import ConfigError, DataError

log = logging.getLogger("geomed_ssl")
ModelFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, *S) float -> logits (B, K, *S)


# -- checks -----------------------------------------------------------------------------------------------------
def check_request(path: Path, out_path: Path, overlap: float, blend: str, blends: Sequence[str], batch_size: int,
                  num_classes: int, probabilities: bool | str) -> str | None:
    """Validate the arguments both predictors share; returns the probability output kind (None: no proba file)."""
    if _same_file(path, out_path):
        raise DataError(f"the output '{out_path}' would overwrite the input; choose another output path.")
    check_pace(overlap, batch_size)
    if blend not in blends:
        raise ConfigError(f"blend must be one of {', '.join(blends)}, got '{blend}'.")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}.")
    return proba_kind(probabilities)


def check_pace(overlap: float, batch_size: int) -> None:
    """The window overlap (--overlap) and windows per forward pass (--batch-size) a prediction can use."""
    if not 0.0 <= float(overlap) < 1.0:
        raise ConfigError(f"overlap (--overlap) must be in [0, 1), got {overlap}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size (--batch-size) must be >= 1, got {batch_size}.")


def as_window(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """An int or per-axis sequence as ``ndim`` positive ints (``name`` is the argument named in the error)."""
    out = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(out) != ndim or any(v < 1 for v in out):
        raise ConfigError(f"{name} must be a positive int or {ndim} positive ints, got {value!r}.")
    return out


def proba_kind(probabilities: bool | str) -> str | None:
    """The probability file's dtype ('float32' for True, or 'uint8'); None for no probability file."""
    if probabilities in (False, None):
        return None
    kind = "float32" if probabilities is True else str(probabilities)
    if kind not in ("float32", "uint8"):
        raise ConfigError(f"probabilities must be False, True/'float32' or 'uint8', got {probabilities!r}.")
    return kind


def warn_if_nothing_predicted(path: str | Path, valid: int, nodata: float | None, output: str | Path) -> None:
    """A warning when a prediction holds no valid pixel / voxel: the input was all nodata as read."""
    if valid:
        return
    log.warning("warning: '%s' has no valid pixel or voxel as read (nodata=%s, NaN); '%s' holds only the nodata "
                "label. Check data.nodata and that the file holds data.", path, nodata, output)


def channel_records(folder: Path, data_cfg: Any, kind: str, strict: bool = False,
                    names_by_position: str = "warn") -> list[Any]:
    """The ``data.channels`` stacks under ``folder`` as catalog records (one per folder of channel files), grouped
    as training grouped them: the channel globs pick the files among those ``data.exclude`` keeps (a
    ``flair_brain_mask.nii.gz`` beside ``flair_brain.nii.gz`` is no channel; ``folder`` a channel file named
    explicitly: its case, without the patterns that would leave that file out). Stacks the catalog leaves out (all
    nodata, unreadable) are named in one warning, not dropped without a word."""
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.files.listing import glob_match

    exclude = list(data_cfg.exclude or [])
    if Path(folder).is_file():  # a channel file named explicitly is predicted: the patterns that leave it out go
        exclude = [g for g in exclude if not glob_match(Path(folder).name, g)]
    cfg = dataclasses.replace(data_cfg, kind=kind, include=["**/*"], exclude=exclude, patch_size=1)
    catalog = scan(folder, cfg, strict=strict, names_by_position=names_by_position)
    if catalog.problems:
        listed = "; ".join(f"'{p.path}': {p.reason}" for p in catalog.problems[:3])
        more = f" (and {len(catalog.problems) - 3} more)" if len(catalog.problems) > 3 else ""
        log.warning(f"warning: {len(catalog.problems)} stacked input(s) under '{folder}' are not predicted: "
                    f"{listed}{more}.")
    return catalog.records


def as_model(model_fn: ModelFn, device: str | torch.device) -> ModelFn:
    """An ``nn.Module`` moved to ``device`` in eval mode; any other callable as it is."""
    if isinstance(model_fn, torch.nn.Module):
        model_fn = model_fn.to(device).eval()
    return model_fn


def blends_logits(model_fn: ModelFn) -> bool:
    """Whether overlapping windows blend the model's logits (softmax taken after blending) rather than its
    probabilities: a model whose scores are linear in its features says so (``blend_logits``: a fitted linear
    probe head), so its whole-scene prediction is the probe applied to the blended features, as ``compare`` scores
    it."""
    return bool(getattr(model_fn, "blend_logits", False))


def window_scores(model_fn: ModelFn, batch: torch.Tensor, num_classes: int) -> torch.Tensor:
    """What overlapping windows blend: float32 logits for a model that :func:`blends_logits`, else softmax
    probabilities (B, K, *S)."""
    if blends_logits(model_fn):
        return checked_logits(model_fn, batch, num_classes).float()
    return softmax_probs(model_fn, batch, num_classes)


def softmax_probs(model_fn: ModelFn, batch: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Run the model on (B, C, *S) and return float32 softmax probabilities (B, K, *S)."""
    return torch.softmax(checked_logits(model_fn, batch, num_classes).float(), dim=1)


def checked_logits(model_fn: ModelFn, batch: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The model's output on (B, C, *S), checked to be logits (B, K, *S)."""
    logits = model_fn(batch)
    if not isinstance(logits, torch.Tensor) or logits.ndim != batch.ndim or logits.shape[0] != batch.shape[0] \
            or logits.shape[1] != num_classes or logits.shape[2:] != batch.shape[2:]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"the model returned {got} for a batch of {tuple(batch.shape)}; expected logits "
                          f"(B, {num_classes}, {', '.join(map(str, batch.shape[2:]))}) with num_classes={num_classes}.")
    return logits


def _same_file(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()
