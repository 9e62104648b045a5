"""MAE method: nodata handling, determinism, previews, registry, and that it learns."""

from __future__ import annotations

import pytest
import torch

from geomed_ssl.config import MethodConfig
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods import METHODS, build_method
from geomed_ssl.methods.mae import MAE
from geomed_ssl.methods.masking import patchify
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def tiny_mae(norm_pix_loss: bool = True, bands: int = 4, spatial_dims: int = 2, size: int = 16, patch: int = 4,
             mask_ratio: float = 0.75) -> MAE:
    enc = EncoderConfig(in_chans=bands, spatial_dims=spatial_dims, img_size=size, patch_size=patch, embed_dim=48,
                        depth=2, num_heads=4)
    method = MethodConfig(mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss, decoder_embed_dim=24, decoder_depth=1,
                          decoder_num_heads=4)
    return build_method(method, enc, max_steps=10)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_all_valid_mask_gives_exactly_the_plain_loss(norm_pix_loss):
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix_loss)
    x, noise = torch.randn(2, 4, 16, 16), torch.rand(2, 16)
    plain = mae(x, noise=noise).loss
    masked = mae(x, torch.ones(2, 16, 16, dtype=torch.bool), noise=noise).loss
    assert torch.equal(plain, masked)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_nodata_pixels_do_not_change_the_loss(norm_pix_loss):
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix_loss)
    x, noise = torch.randn(2, 4, 16, 16), torch.rand(2, 16)
    valid = torch.rand(2, 16, 16) > 0.3
    valid[0, :8, :8] = False  # whole patches of nodata too
    loss = mae(x, valid, noise).loss
    y = torch.where(valid[:, None], x, torch.full_like(x, 1e3))
    torch.testing.assert_close(mae(y, valid, noise).loss, loss, atol=0, rtol=0)
    z = torch.where(valid[:, None], x, torch.full_like(x, float("nan")))
    loss_nan = mae(z, valid, noise).loss
    torch.testing.assert_close(loss_nan, loss, atol=0, rtol=0)
    loss_nan.backward()
    assert all(torch.isfinite(p.grad).all() for p in mae.parameters() if p.grad is not None)
    assert not torch.allclose(mae(x, None, noise).loss, loss)  # the mask matters


def test_loss_uses_only_masked_valid_pixels():
    mae = tiny_mae(norm_pix_loss=False)
    x, noise = torch.randn(1, 4, 16, 16), torch.rand(1, 16)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    valid[0, 0, 0] = False
    out = mae(x, valid, noise)
    err = (out.pred - patchify(x.masked_fill(~valid[:, None], 0), (4, 4))) ** 2  # (1, 16, 64)
    w = patchify(valid[:, None].expand_as(x), (4, 4)) & out.mask.bool()[..., None]
    torch.testing.assert_close(out.loss, err[w].mean())


@pytest.mark.parametrize("bands", [1, 200])
def test_3d_and_many_bands_train_step_is_finite(bands):
    mae = tiny_mae(bands=bands, spatial_dims=3, size=8, patch=4)
    batch = {"image": torch.randn(2, bands, 8, 8, 8), "valid": torch.rand(2, 8, 8, 8) > 0.2}
    out = mae.training_loss(batch, 0, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.logs) == {"recon_loss", "valid_fraction"}


def test_training_loss_randomness_comes_from_the_generator():
    mae = tiny_mae()
    batch = {"image": torch.randn(2, 4, 16, 16)}
    a = mae.training_loss(batch, 0, torch.Generator().manual_seed(3)).loss
    b = mae.training_loss(batch, 0, torch.Generator().manual_seed(3)).loss
    c = mae.training_loss(batch, 0, torch.Generator().manual_seed(4)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masks_follow_the_sample_index_so_the_batch_split_does_not_matter():
    mae = tiny_mae()
    x = torch.randn(8, 4, 16, 16)
    whole = mae.training_loss({"image": x, "index": torch.arange(8)}, 0, torch.Generator().manual_seed(5)).loss
    halves = [mae.training_loss({"image": x[i:i + 4], "index": torch.arange(i, i + 4)}, 0,
                                torch.Generator().manual_seed(5)).loss for i in (0, 4)]  # two ranks of 4
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)
    shifted = mae.training_loss({"image": x[:4], "index": torch.arange(4, 8)}, 0, torch.Generator().manual_seed(5))
    assert not torch.equal(shifted.loss, halves[0])  # other indices, other masks


def test_reconstruct_undoes_norm_pix_per_patch():
    mae = tiny_mae(norm_pix_loss=True)
    torch.nn.init.zeros_(mae.decoder.pred.weight)
    torch.nn.init.zeros_(mae.decoder.pred.bias)  # predicts 0 = the patch mean in normalised space
    x = torch.randn(2, 4, 16, 16)
    mae.train()
    out = mae.reconstruct(x, noise=torch.rand(2, 16))
    assert mae.training  # mode restored
    assert out["pred_image"].shape == x.shape and out["mask_image"].shape == (2, 16, 16)
    assert out["mask_image"].float().mean() == 0.75
    patch_mean = patchify(x, (4, 4)).mean(-1, keepdim=True)
    torch.testing.assert_close(patchify(out["pred_image"], (4, 4)), patch_mean.expand(-1, -1, 64))


def test_registry_and_weight_decay_names():
    assert METHODS["mae"] is MAE
    mae = tiny_mae()
    assert isinstance(mae.export_encoder(), ViTEncoder)
    names = {n for n, _ in mae.named_parameters()} | {n for n, _ in mae.named_buffers()}
    nwd = mae.no_weight_decay()
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.pos_embed", "decoder.pos_embed"} == nwd <= names
    with pytest.raises(ConfigError, match="method.name"):
        build_method(MethodConfig(name="not_a_method"), mae.encoder_cfg, 1)
    with pytest.raises(ConfigError, match="decoder_embed_dim"):
        build_method(MethodConfig(decoder_embed_dim=30, decoder_num_heads=3), mae.encoder_cfg, 1)


def test_tiny_mae_loss_decreases_on_structured_batch():
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix_loss=False, mask_ratio=0.5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    freqs = torch.tensor([1.0, 2.0, 3.0, 0.5])[:, None, None]
    image = torch.stack([torch.sin(6.28 * freqs * (xx + s * yy)) for s in (0.0, 0.5, 1.0, -1.0)])  # (4, 4, 16, 16)
    batch = {"image": image}
    probe = torch.rand(4, 16, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        before = mae(image, noise=probe).loss.item()
    opt = torch.optim.Adam(mae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        loss = mae.training_loss(batch, step, gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = mae(image, noise=probe).loss.item()
    assert after < 0.7 * before, (before, after)
