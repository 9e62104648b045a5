"""MAE with spectral-aware embeddings: targets line up with tokens, group masking, channel sampling, previews."""

from __future__ import annotations

import math

import pytest
import torch

from geomed_ssl.config import MethodConfig
from geomed_ssl.bands.names import lookup_wavelengths
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.mae import MAE
from geomed_ssl.methods.masking import patchify, unit_patchify, unit_unpatchify
from geomed_ssl.models.encoder import EncoderConfig

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
S2_WL = lookup_wavelengths(S2, "sentinel2")


def make(kind: str, bands: int = 13, **method) -> MAE:
    enc = dict(in_chans=bands, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
               embedding=kind, band_names=S2[:bands], wavelengths=S2_WL[:bands])
    enc.update(method.pop("enc", {}))
    cfg = MethodConfig(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **method)
    torch.manual_seed(0)
    return MAE(EncoderConfig(**enc), cfg, 10)


def band_image(bands: int = 13) -> torch.Tensor:
    """Band c holds 100 * c plus the pixel index, so every value says which band and pixel it came from."""
    pix = torch.arange(256, dtype=torch.float32).reshape(16, 16)
    return (100.0 * torch.arange(bands, dtype=torch.float32)[:, None, None] + pix)[None]  # (1, C, 16, 16)


@pytest.mark.parametrize("kind, enc, units", [
    ("grouped", {"band_groups": [[1, 2, 3, 7], [4, 5, 6, 12], [10, 11]]}, [[1, 2, 3, 7], [4, 5, 6, 12], [10, 11]]),
    ("spectral", {"spectral_chunk": 1}, [[c] for c in range(13)]),
    ("spectral", {"spectral_chunk": 4}, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]),
])
def test_reconstruction_targets_line_up_with_tokens(kind: str, enc: dict, units: list[list[int]]) -> None:
    mae = make(kind, norm_pix_loss=False, enc=enc)
    x = band_image()
    assert mae.encoder.units(13) == units
    out = mae(x)
    n, cmax = 16, max(len(u) for u in units)
    assert out.pred.shape == (1, len(units) * n, 16 * cmax) and out.mask.shape == (1, len(units) * n)
    target, real = unit_patchify(x, (4, 4), units)
    for u, chans in enumerate(units):  # token u*N + k holds patch k of unit u's own bands, channel-last
        own = patchify(x[:, chans], (4, 4))  # (1, N, 16 * |u|)
        got = target[:, u * n:(u + 1) * n].reshape(1, n, 16, cmax)[..., : len(chans)].reshape(1, n, -1)
        torch.testing.assert_close(got, own)
        assert real[u * n:(u + 1) * n].reshape(n, 16, cmax).sum(-1).eq(len(chans)).all()
    # the loss is exactly the per-token MSE against those targets, on masked tokens only
    err = ((out.pred - target) ** 2 * real).sum(-1) / real.sum(-1)
    torch.testing.assert_close(out.loss, (err * out.mask).sum() / out.mask.sum())
    covered = sorted(c for u in units for c in u)
    back = unit_unpatchify(target, (4, 4), (4, 4), units, 13)
    torch.testing.assert_close(back[:, covered], x[:, covered])


def test_only_masked_tokens_and_own_bands_get_a_gradient() -> None:
    mae = make("grouped", enc={"band_groups": [[0, 1], [2]]}, bands=3)
    x = torch.randn(2, 3, 16, 16)
    out = mae(x)
    grad = torch.autograd.grad(out.loss, out.pred)[0]  # (B, 2*16, 16*2)
    per_token = grad.abs().sum(-1) > 0
    assert torch.equal(per_token, out.mask.bool())
    group1 = grad[:, 16:].reshape(2, 16, 16, 2)
    assert group1[..., 1].abs().sum() == 0  # the single-band group's padding channel is not trained


@pytest.mark.parametrize("kind", ["grouped", "spectral"])
def test_consistent_masking_masks_every_unit_of_a_position(kind: str) -> None:
    mae = make(kind, group_masking="consistent")
    out = mae(torch.randn(2, 13, 16, 16), noise=torch.rand(2, 16))
    per_unit = out.mask.reshape(2, -1, 16)  # (B, U, N)
    assert (per_unit == per_unit[:, :1]).all()
    assert per_unit[:, 0].sum(-1).tolist() == [16 - 4, 16 - 4]  # num_keep(16, 0.75) = 4 positions kept


def test_independent_masking_masks_tokens_separately() -> None:
    mae = make("spectral")
    out = mae(torch.randn(2, 13, 16, 16), noise=torch.rand(2, 13 * 16))
    per_unit = out.mask.reshape(2, 13, 16)
    assert not (per_unit == per_unit[:, :1]).all()
    assert out.mask.sum(-1).tolist() == [13 * 16 - int(13 * 16 * 0.25)] * 2


@pytest.mark.parametrize("kind, chunk", [("spectral", 1), ("spectral", 4), ("wavelength", 1)])
def test_channel_sampling_draws_band_subsets_from_the_generator(kind: str, chunk: int) -> None:
    mae = make(kind, channel_sampling=True, channel_sampling_min=3, enc={"spectral_chunk": chunk})
    sizes = []
    for seed in range(12):
        ids = mae.sample_channels(torch.Generator().manual_seed(seed))
        assert torch.equal(ids, mae.sample_channels(torch.Generator().manual_seed(seed)))
        assert ids.tolist() == sorted(set(ids.tolist())) and 3 <= len(ids) <= 13
        if chunk > 1:  # whole chunks of adjacent bands
            assert all(c // chunk * chunk in ids.tolist() for c in ids.tolist())
        sizes.append(len(ids))
    assert len(set(sizes)) > 2
    batch = {"image": torch.randn(2, 13, 16, 16), "valid": torch.ones(2, 16, 16, dtype=torch.bool)}
    a = mae.training_loss(batch, 0, torch.Generator().manual_seed(7))
    b = mae.training_loss(batch, 0, torch.Generator().manual_seed(7))
    assert torch.isfinite(a.loss) and torch.equal(a.loss, b.loss) and "bands_seen" in a.logs


def test_wavelength_mae_predicts_all_bands_from_a_subset() -> None:
    mae = make("wavelength")
    x = torch.randn(2, 13, 16, 16)
    out = mae(x, channel_ids=torch.tensor([1, 2, 3, 7]))
    assert out.units is None and out.pred.shape == (2, 16, 16 * 13)  # plain targets: every band
    torch.testing.assert_close(out.loss, mae.forward_loss(x, out.pred, out.mask))


def test_channel_sampling_is_refused_for_fixed_band_embeddings() -> None:
    with pytest.raises(ConfigError, match="channel_sampling"):
        make("grouped", channel_sampling=True)


@pytest.mark.parametrize("kind", ["grouped", "spectral", "wavelength"])
def test_train_step_with_nodata_and_previews(kind: str) -> None:
    mae = make(kind)
    x = torch.randn(2, 13, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[0, :5] = False
    out = mae.training_loss({"image": x, "valid": valid}, 0, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    x_nodata = x.clone()
    x_nodata[:, :, :5] = 1e6  # nodata values never change the loss
    noise_n = 16 if kind == "wavelength" else len(mae.encoder.units(13)) * 16
    noise = torch.rand(2, noise_n)
    torch.testing.assert_close(mae(x, valid, noise).loss, mae(torch.where(valid[:, None], x, x_nodata), valid, noise).loss)
    rec = mae.reconstruct(x, valid, noise)
    assert rec["pred_image"].shape == x.shape and rec["mask_image"].shape == (2, 16, 16)


def test_reconstruct_undoes_per_token_normalisation() -> None:
    mae = make("spectral", enc={"spectral_chunk": 2})
    x = torch.randn(1, 13, 16, 16)
    target, real = unit_patchify(x, (4, 4), mae.encoder.units(13))
    mean = (target * real).sum(-1, keepdim=True) / real.sum(-1, keepdim=True)
    var = (((target - mean) * real) ** 2).sum(-1, keepdim=True) / (real.sum(-1, keepdim=True) - 1)
    normed = (target - mean) / (var + 1e-6) ** 0.5
    mae.decoder.forward = lambda *a, **k: normed  # a perfect decoder
    rec = mae.reconstruct(x, noise=torch.rand(1, math.ceil(13 / 2) * 16))
    torch.testing.assert_close(rec["pred_image"], x, atol=1e-4, rtol=1e-4)


def test_per_position_noise_masks_whole_positions_whatever_the_setting() -> None:
    mae = make("grouped")  # group_masking: independent
    out = mae(torch.randn(1, 13, 16, 16), noise=torch.rand(1, 16))  # previews pass one value per position
    per_unit = out.mask.reshape(1, -1, 16)
    assert (per_unit == per_unit[:, :1]).all()
    with pytest.raises(ValueError, match="per position"):
        mae(torch.randn(1, 13, 16, 16), noise=torch.rand(1, 17))
