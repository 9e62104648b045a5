"""Where a model runs: ``--device`` (auto, cpu, cuda[:N]) as a torch device, and the device a model's weights are on."""

from __future__ import annotations

import torch

from geomed_ssl.errors import GeomedError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; anything else as torch reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise GeomedError(f"device '{device}' is not one torch knows ({err}); use auto, cpu or cuda[:N].") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GeomedError(f"device '{device}' was asked for but torch sees no CUDA device here; use --device cpu "
                          "(or auto).")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live."""
    return next(model.parameters()).device
