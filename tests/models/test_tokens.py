"""The one token-grid helper: every patch embedding, patchify and the encoder config agree on it."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.errors import DataError
from geomed_ssl.methods.masking import patchify
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.tokens import token_grid


@pytest.mark.parametrize("shape, patch, grid", [((64, 48), (8, 16), (8, 3)), ((8, 12, 16), (2, 4, 4), (4, 3, 4))])
def test_token_grid_divides_each_axis(shape, patch, grid) -> None:
    assert token_grid(shape, patch) == grid


@pytest.mark.parametrize("shape, patch", [((64, 50), (8, 8)), ((64, 64), (8, 8, 8))])
def test_window_that_is_not_whole_tokens_is_a_data_error_naming_the_fix(shape, patch) -> None:
    with pytest.raises(DataError, match="multiples of model.patch_size"):
        token_grid(shape, patch)


@pytest.mark.parametrize("embedding", ["plain", "spectral"])
def test_patch_embeddings_patchify_and_the_config_share_the_grid(embedding: str) -> None:
    cfg = EncoderConfig(in_chans=3, img_size=(32, 16), patch_size=(8, 4), embed_dim=32, depth=1, num_heads=2,
                        embedding=embedding)
    x = torch.randn(1, 3, 32, 16)
    _, grid = ViTEncoder(cfg).embed(x)
    assert grid == cfg.grid == token_grid((32, 16), (8, 4)) and patchify(x, (8, 4)).shape[1] == 4 * 4
    with pytest.raises(DataError, match="not a 2D multiple"):
        patchify(torch.randn(1, 3, 30, 16), (8, 4))
