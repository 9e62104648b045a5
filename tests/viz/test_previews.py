"""The reconstruction preview a pretraining run draws every ``train.preview_every`` steps, for every method that
reconstructs, on rasters and volumes: a crash here ends a run after hours of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geomed_ssl.config import MethodConfig
from geomed_ssl.methods import METHODS, build_method
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.viz.previews import render_reconstruction

RECONSTRUCTING = sorted(name for name, cls in METHODS.items() if cls.reconstructs())


def test_the_methods_that_reconstruct_are_the_masked_image_ones() -> None:
    assert {"mae", "simmim", "inpainting"} <= set(RECONSTRUCTING)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", RECONSTRUCTING)
def test_every_reconstructing_method_draws_its_preview(name: str, dims: int, tmp_path: Path) -> None:
    size = (32,) * dims
    enc = EncoderConfig(in_chans=3, img_size=size, patch_size=(4,) * dims, embed_dim=32, depth=1, num_heads=2,
                        spatial_dims=dims)
    extra = {"mask_patch_size": 8} if name == "simmim" else {}  # 2x2(x2) tokens per mask patch, as the recipe has
    method = build_method(MethodConfig(name=name, **extra), enc, max_steps=10)
    batch = {"image": torch.rand(2, 3, *size), "valid": torch.ones(2, *size, dtype=torch.bool)}
    path = tmp_path / f"{name}_{dims}d.png"
    render_reconstruction(method, batch, ["B04", "B03", "B02"], None, path)
    assert path.is_file() and path.stat().st_size > 1000
