"""SimMIM: mask patches of several tokens, their checks, and the masked L1 loss against the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.masking import patchify
from geomed_ssl.methods.simmim import simmim_loss, simmim_mask


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mask_of(batch: int, window, token, mask_patch, ratio: float, g: torch.Generator) -> torch.Tensor:
    """simmim_mask with the noise drawn from ``g`` (one value per mask patch)."""
    m = math.prod(w // mask_patch for w in window) if mask_patch >= max(token) else 1
    return simmim_mask(torch.rand(batch, max(m, 1), generator=g), window, token, mask_patch, ratio)


@pytest.mark.parametrize("window,token,mask_patch", [((64, 64), (4, 4), 32), ((32, 48), (4, 4), 16),
                                                     ((16, 32, 32), (4, 4, 4), 8)])
def test_whole_mask_patches_are_masked_at_the_ceil_of_the_ratio(window, token, mask_patch) -> None:
    mask = mask_of(8, window, token, mask_patch, 0.6, gen())
    grid = tuple(w // t for w, t in zip(window, token))
    scale = mask_patch // token[0]
    assert mask.shape == (8, math.prod(grid))
    blocks = mask.reshape(8, *(v for g in grid for v in (g // scale, scale)))  # (B, M0, s, M1, s[, M2, s])
    per_patch = blocks.amin(dim=tuple(range(2, blocks.ndim, 2)))
    assert torch.equal(per_patch, blocks.amax(dim=tuple(range(2, blocks.ndim, 2))))  # constant inside a patch
    m = math.prod(w // mask_patch for w in window)
    assert torch.equal(per_patch.flatten(1).sum(1), torch.full((8,), float(math.ceil(0.6 * m))))


def test_mask_comes_from_the_noise_alone() -> None:
    a, b = mask_of(4, (64, 64), (4, 4), 16, 0.5, gen(3)), mask_of(4, (64, 64), (4, 4), 16, 0.5, gen(3))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert not torch.equal(a, mask_of(4, (64, 64), (4, 4), 16, 0.5, gen(4)))


def test_mask_patch_that_does_not_divide_the_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not divide the window") as err:
        mask_of(2, (64, 64), (4, 4), 24, 0.6, gen())
    assert "\n" not in str(err.value)


def test_mask_patch_not_a_multiple_of_the_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a multiple of the token patch"):
        mask_of(2, (64, 64), (8, 8), 4, 0.6, gen())
    with pytest.raises(ConfigError, match="not a multiple of the token patch"):
        mask_of(2, (48, 48), (8, 8), 12, 0.6, gen())


def paper_loss(x: torch.Tensor, x_rec: torch.Tensor, token_mask: torch.Tensor, patch: int) -> torch.Tensor:
    """SimMIM's ``forward`` (Xie et al., models/simmim.py): the token mask upsampled to pixels, then
    ``(l1 * mask).sum() / (mask.sum() + 1e-5) / in_chans``."""
    b, c, h, w = x.shape
    mask = token_mask.reshape(b, h // patch, w // patch)
    mask = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).contiguous()
    loss_recon = F.l1_loss(x, x_rec, reduction="none")
    return (loss_recon * mask).sum() / (mask.sum() + 1e-5) / c


@pytest.mark.parametrize("channels", [1, 3, 13])
def test_masked_l1_equals_the_papers_formula(channels: int) -> None:
    g = gen(channels)
    x, x_rec = torch.randn(3, channels, 32, 32, generator=g), torch.randn(3, channels, 32, 32, generator=g)
    mask = mask_of(3, (32, 32), (4, 4), 16, 0.6, g)
    ours = simmim_loss(patchify(x_rec, (4, 4)), patchify(x, (4, 4)), mask)
    torch.testing.assert_close(ours, paper_loss(x, x_rec, mask, 4), rtol=1e-5, atol=0)


def test_nodata_values_are_left_out_of_sum_and_count() -> None:
    g = gen(9)
    pred, target = torch.randn(2, 16, 32, generator=g), torch.randn(2, 16, 32, generator=g)
    mask = (torch.rand(2, 16, generator=g) < 0.5).float()
    valid = torch.rand(2, 16, 32, generator=g) < 0.7
    keep = valid & mask.bool()[..., None]
    expected = (pred - target).abs()[keep].mean()
    torch.testing.assert_close(simmim_loss(pred, target, mask, valid), expected)
