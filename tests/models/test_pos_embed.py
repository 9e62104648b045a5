"""Fixed sin-cos position embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomed_ssl.models.pos_embed import axis_dims, interpolate_pos_embed, sincos_pos_embed


def mae_reference_2d(embed_dim: int, gh: int, gw: int) -> np.ndarray:
    """MAE's published formula (util/pos_embed.py), rewritten: first half from the w grid, second from h."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    return np.concatenate([one_d(embed_dim // 2, grid_w), one_d(embed_dim // 2, grid_h)], axis=1)


@pytest.mark.parametrize("dim,grid", [(64, (4, 4)), (192, (8, 8)), (32, (3, 5))])
def test_2d_matches_mae_formula(dim, grid):
    ours = sincos_pos_embed(grid, dim)
    ref = torch.from_numpy(mae_reference_2d(dim, *grid)).float()
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_cls_row_is_zero():
    pos = sincos_pos_embed((2, 2), 16, cls_token=True)
    assert pos.shape == (5, 16) and torch.all(pos[0] == 0)


@pytest.mark.parametrize("dim", [48, 50, 64, 192])
def test_3d_dims_split_across_axes_and_positions_unique(dim):
    dims = axis_dims(dim, 3)
    assert sum(dims) == dim and all(d % 2 == 0 and d > 0 for d in dims)
    grid = (3, 4, 5)
    pos = sincos_pos_embed(grid, dim)
    assert pos.shape == (60, dim)
    assert torch.unique(pos, dim=0).shape[0] == 60
    # the last block of channels depends only on the depth index (axes are listed w, h, d)
    d_part = pos[:, dim - dims[2]:].reshape(3, 20, dims[2])
    assert torch.allclose(d_part, d_part[:, :1].expand_as(d_part))


def test_2d_needs_dim_divisible_by_4():
    with pytest.raises(ValueError):
        sincos_pos_embed((2, 2), 30)


@pytest.mark.parametrize("old,new", [((4, 4), (6, 8)), ((2, 3, 4), (4, 3, 2))])
def test_interpolate_shape_and_identity(old, new):
    pos = sincos_pos_embed(old, 24)
    assert interpolate_pos_embed(pos, old, old) is pos
    out = interpolate_pos_embed(pos, old, new)
    assert out.shape == (int(np.prod(new)), 24) and torch.isfinite(out).all()
