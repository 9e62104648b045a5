"""Where a model runs: --device resolved to a torch device."""

from __future__ import annotations

import pytest
import torch


def test_device_auto_falls_back_to_cpu_and_cuda_without_gpu_is_a_clear_error(monkeypatch):
    from geomed_ssl.models.device import resolve_device
    from geomed_ssl.errors import GeomedError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    with pytest.raises(GeomedError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(GeomedError, match="auto, cpu or cuda"):
        resolve_device("tpu-ish")
