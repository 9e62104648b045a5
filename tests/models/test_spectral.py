"""Spectral-aware patch embeddings: token shapes and positions, wavelength invariances, other band sets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.checkpoint import load_encoder, save_encoder
from geomed_ssl.config import DataConfig, MethodConfig, ModelConfig
from geomed_ssl.bands.names import aviris_92av3c_bands, lookup_wavelengths
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.methods.mae import MAE
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]  # EuroSAT order
S2_WL = lookup_wavelengths(S2, "sentinel2")
SUBSET = ["B02", "B03", "B04", "B08", "B11", "B12"]
KINDS = ["plain", "grouped", "spectral", "wavelength"]


def bands(n: int) -> tuple[list[str], list[float]]:
    if n == 13:
        return S2, S2_WL
    if n == 4:
        return S2[1:4] + ["B08"], [S2_WL[i] for i in (1, 2, 3, 7)]
    names, wl = aviris_92av3c_bands()
    return names[:n], wl[:n]


def cfg_for(kind: str, n: int, **kw) -> EncoderConfig:
    names, wl = bands(n)
    base = dict(in_chans=n, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
                embedding=kind, band_names=names, wavelengths=wl)
    base.update(kw)
    return EncoderConfig(**base)


def units_per_position(kind: str, n: int, chunk: int = 1) -> int:
    return {"plain": 1, "wavelength": 1, "grouped": math.ceil(n / 4), "spectral": math.ceil(n / chunk)}[kind]


@pytest.mark.parametrize("n", [4, 13, 200])
@pytest.mark.parametrize("kind", KINDS)
def test_token_counts_positions_and_spatial_outputs(kind: str, n: int) -> None:
    chunk = 8 if n == 200 else 1
    enc = ViTEncoder(cfg_for(kind, n, spectral_chunk=chunk)).eval()
    x = torch.randn(2, n, 16, 16)
    tokens, grid = enc.embed(x)
    u = units_per_position(kind, n, chunk)
    assert grid == (4, 4) and tokens.shape == (2, u * 16, 32)
    raw, _ = enc.patch_embed(x)
    pos = enc.pos_embed[:, 1:]  # (1, 16, D): token u*N + n sits at spatial position n
    torch.testing.assert_close(tokens - raw, pos.repeat(1, u, 1).expand_as(raw))
    assert enc(x).shape == (2, 1 + 16, 32)
    feats, fgrid = enc.forward_features(x, [0, 1])
    assert fgrid == (4, 4) and [f.shape for f in feats] == [(2, 16, 32)] * 2


def test_grouped_tokens_carry_their_group_embedding_and_read_only_their_bands() -> None:
    cfg = cfg_for("grouped", 13, band_groups=[[1, 2, 3, 7], [4, 5, 6, 12], [10, 11]])
    enc = ViTEncoder(cfg).eval()
    x = torch.randn(1, 13, 16, 16)
    tokens, _ = enc.patch_embed(x)  # (1, 3*16, D)
    y = x.clone()
    y[:, 10:12] += 5.0  # only group 2's bands change
    changed = (enc.patch_embed(y)[0] - tokens).abs().sum(-1).reshape(3, 16) > 0
    assert changed.tolist() == [[False] * 16, [False] * 16, [True] * 16]
    y = x.clone()
    y[:, [0, 8, 9]] += 5.0  # bands in no group are not read
    torch.testing.assert_close(enc.patch_embed(y)[0], tokens)
    bias = torch.stack([p.bias for p in enc.patch_embed.proj])  # (3, D)
    zero_tokens, _ = enc.patch_embed(torch.zeros(1, 13, 16, 16))
    torch.testing.assert_close(zero_tokens.reshape(3, 16, 32), (bias + enc.patch_embed.group_embed)[:, None].expand(3, 16, 32))


def test_recipe_band_groups_by_name_and_default_groups() -> None:
    model = ModelConfig(embedding="grouped", patch_size=4, embed_dim=32, depth=1, num_heads=2,
                        band_groups=[["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]])
    cfg = EncoderConfig.from_recipe(model, DataConfig(patch_size=16), 13, S2, S2_WL)
    assert cfg.band_groups == [[1, 2, 3, 7], [4, 5, 6, 12], [10, 11]]
    assert EncoderConfig.from_dict(cfg.to_dict()).band_groups == cfg.band_groups
    assert cfg_for("grouped", 13).band_groups == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    model.band_groups = [["B02", "B99"]]
    with pytest.raises(ConfigError, match=r"B99"):
        EncoderConfig.from_recipe(model, DataConfig(patch_size=16), 13, S2, S2_WL)


def test_wavelength_embeddings_need_every_wavelength() -> None:
    with pytest.raises(ConfigError, match=r"data\.sensor.*data\.wavelengths"):
        cfg_for("wavelength", 4, wavelengths=None)
    with pytest.raises(ConfigError, match=r"unknown for \['B03'\]"):
        cfg_for("spectral", 4, channel_embed="wavelength", wavelengths=[0.49, None, 0.665, 0.842])


def test_wavelength_embedding_is_unchanged_by_permuting_bands_with_their_wavelengths() -> None:
    enc = ViTEncoder(cfg_for("wavelength", 13)).eval()
    x = torch.randn(2, 13, 16, 16)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    shuffled = ViTEncoder(cfg_for("wavelength", 13, band_names=[S2[i] for i in perm],
                                  wavelengths=[S2_WL[i] for i in perm])).eval()
    shuffled.load_state_dict(enc.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(shuffled.patch_embed(x[:, perm])[0], enc.patch_embed(x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shuffled(x[:, perm]), enc(x), atol=1e-4, rtol=1e-4)


def test_spectral_wavelength_channel_embedding_is_unchanged_by_permutation() -> None:
    enc = ViTEncoder(cfg_for("spectral", 13, channel_embed="wavelength")).eval()
    x = torch.randn(1, 13, 16, 16)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(1))
    other = enc.select_bands([S2[i] for i in perm], [S2_WL[i] for i in perm])
    with torch.no_grad():  # same tokens, in the permuted unit order; the merged output is the same
        a = enc.patch_embed(x)[0].reshape(13, 16, 32)
        b = other.patch_embed(x[:, perm])[0].reshape(13, 16, 32)
        torch.testing.assert_close(b, a[perm])
        torch.testing.assert_close(other(x[:, perm]), enc(x), atol=1e-5, rtol=1e-5)


def _trained_wavelength_encoder(steps: int = 3) -> MAE:
    stats = {"version": 1, "bands": [{"name": n, "mean": float(i), "std": 1.0 + i, "p1": 0.0, "p99": 9.0, "count": 5}
                                     for i, n in enumerate(S2)]}
    mae = MAE(cfg_for("wavelength", 13, stats=stats), MethodConfig(decoder_embed_dim=32, decoder_depth=1,
                                                                   decoder_num_heads=2), steps)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 13, 16, 16)
    for step in range(steps):
        loss = mae.training_loss({"image": x}, step, gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mae


def test_wavelength_encoder_runs_on_a_band_subset_with_restricted_generated_weights(tmp_path: Path) -> None:
    enc = _trained_wavelength_encoder().export_encoder().eval()
    save_encoder(enc, tmp_path / "encoder")
    sub = load_encoder(tmp_path, bands=SUBSET)
    assert sub.config.in_chans == 6 and sub.config.band_names == SUBSET
    assert [b["name"] for b in sub.config.stats["bands"]] == SUBSET
    assert [b["mean"] for b in sub.config.stats["bands"]] == [float(S2.index(n)) for n in SUBSET]
    idx = [S2.index(n) for n in SUBSET]
    assert sub.config.wavelengths == [S2_WL[i] for i in idx]
    x6 = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        kernels, biases = enc.patch_embed.band_kernels(enc.patch_embed.band_features)  # 13-band computation
        want = F.conv2d(x6, kernels[idx].transpose(0, 1), biases[idx].mean(0), stride=4).flatten(2).transpose(1, 2)
        got, grid = sub.patch_embed(x6)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert sub(x6).shape == (2, 17, 32) and grid == (4, 4)
        # the same as the 13-band encoder reading only those bands (no zero-filled bands anywhere)
        torch.testing.assert_close(sub.embed(x6)[0], enc.embed(x6, torch.tensor(idx))[0], atol=1e-5, rtol=1e-5)


def test_plain_encoder_refuses_a_band_subset_naming_the_missing_bands(tmp_path: Path) -> None:
    save_encoder(ViTEncoder(cfg_for("plain", 13)), tmp_path / "encoder")
    with pytest.raises(DataError, match=r"missing \['B01', 'B05', 'B06', 'B07', 'B09', 'B10', 'B8A'\]") as err:
        load_encoder(tmp_path, bands=SUBSET)
    assert "model.embedding=spectral or wavelength" in str(err.value)


def test_grouped_encoder_refuses_other_bands(tmp_path: Path) -> None:
    save_encoder(ViTEncoder(cfg_for("grouped", 13)), tmp_path / "encoder")
    with pytest.raises(DataError, match=r"extra \['B99'\]"):
        load_encoder(tmp_path, bands=S2[:-1] + ["B99"])


def test_spectral_encoder_on_a_subset_equals_its_channel_ids_path(tmp_path: Path, caplog) -> None:
    enc = ViTEncoder(cfg_for("spectral", 13)).eval()
    save_encoder(enc, tmp_path / "encoder")
    with caplog.at_level("INFO", logger="geomed_ssl"):
        sub = load_encoder(tmp_path, bands=SUBSET)
    assert "B11 (1.61 µm) <- B11 (1.61 µm) [name]" in caplog.text  # the mapping is logged
    idx = torch.tensor([S2.index(n) for n in SUBSET])
    torch.testing.assert_close(sub.patch_embed.channel_embed, enc.patch_embed.channel_embed[idx])
    x6 = torch.randn(1, 6, 16, 16)
    with torch.no_grad():
        tokens, grid = enc.embed(x6, idx)
        torch.testing.assert_close(sub.embed(x6)[0], tokens)


def test_bands_of_another_sensor_are_matched_by_wavelength() -> None:
    enc = ViTEncoder(cfg_for("wavelength", 13, stats=None)).eval()
    l8 = ["B2", "B3", "B4", "B5"]  # Landsat 8 blue, green, red, NIR
    sub = enc.select_bands(l8, lookup_wavelengths(l8, "landsat8"))
    assert sub.config.band_names == l8 and sub.config.wavelengths == [0.482, 0.561, 0.655, 0.865]
    assert sub(torch.randn(1, 4, 16, 16)).shape == (1, 17, 32)
    with pytest.raises(DataError, match=r"\['TIR'\] match none"):
        ViTEncoder(cfg_for("spectral", 13)).select_bands(["B02", "TIR"], [0.49, 10.9])


def test_a_name_another_sensor_gives_another_wavelength_is_matched_by_wavelength() -> None:
    """Landsat-8 B10 / B11 are thermal (10.9 / 12.0 µm), Sentinel-2's cirrus and SWIR: a name match that the known
    wavelengths contradict is not taken; Landsat-8 B8 (panchromatic, 0.59 µm) matches no Sentinel-2 B08."""
    from geomed_ssl.models.spectral import match_bands

    s2 = ["B02", "B03", "B04", "B08", "B10", "B11"]
    s2_wl = lookup_wavelengths(s2, "sentinel2")
    l8 = ["B4", "B10", "B11", "B6"]
    matches = match_bands(s2, s2_wl, l8, lookup_wavelengths(l8, "landsat8"))
    assert [(m.index, m.how) for m in matches] == [(2, "wavelength"), (None, "none"), (None, "none"),
                                                   (5, "wavelength")]
    same = match_bands(s2, s2_wl, ["B10", "B04"], [1.3735, None])  # the same band, or no wavelength given
    assert [(m.index, m.how) for m in same] == [(4, "name"), (2, "name")]


def test_wavelength_embedding_reads_band_widths_from_the_recipe_and_the_data() -> None:
    from geomed_ssl.models.spectral import WAVE_DIM

    names, wl = bands(4)
    widths = [0.065, 0.035, 0.03, 0.115]  # Sentinel-2 B02 B03 B04 B08 FWHM (µm)
    cfg = EncoderConfig.from_recipe(ModelConfig(embedding="wavelength", patch_size=4, embed_dim=32, depth=2,
                                                num_heads=2), DataConfig(patch_size=16), 4, names, wl,
                                    bandwidths=widths)
    assert cfg.bandwidths == widths
    torch.manual_seed(0)
    enc = ViTEncoder(cfg).eval()
    assert enc.patch_embed.band_features[:, WAVE_DIM:].abs().sum(1).min() > 0  # every band's width is read
    blind = ViTEncoder(cfg_for("wavelength", 4)).eval()  # the same weights without widths
    blind.load_state_dict(enc.state_dict())
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(enc.patch_embed(x)[0], blind.patch_embed(x)[0])
    sub = enc.select_bands(names[:2], wl[:2], [0.06, None])  # the data's width where known, else the encoder's
    assert sub.config.bandwidths == [0.06, 0.035]


def test_a_flexible_encoder_reads_a_files_bands_in_its_own_order_so_band_chunks_stay_those_of_pretraining() -> None:
    """Slovenia's files store B8A after B08, EuroSAT's last: a spectral embedding with spectral_chunk=4 tokenises
    chunks of adjacent bands, so the data's bands are read in the encoder's order (the same tokens either way)."""
    from types import SimpleNamespace

    from geomed_ssl.models.model_data import encoder_data_bands

    slovenia = S2[:8] + ["B8A"] + S2[8:12]
    catalog = SimpleNamespace(band_names=slovenia, wavelengths=lookup_wavelengths(slovenia, "sentinel2"))
    assert encoder_data_bands(cfg_for("spectral", 13, spectral_chunk=4), catalog) == S2
    catalog = SimpleNamespace(band_names=["B12", "B02", "B04"], wavelengths=None)
    assert encoder_data_bands(cfg_for("wavelength", 13), catalog) == ["B02", "B04", "B12"]


def test_band_flexible_encoders_match_names_written_another_way_and_s2b_b12_as_the_band_rule_does() -> None:
    """An encoder pretrained on undescribed bands (band_1 ...) met the same cube converted from ENVI (GDAL's "Band 1
    (0.400 Micrometers)") or described "Band 1": refused, where plain encoders read it; Sentinel-2B's B12 (2.186 µm)
    was dropped by a Sentinel-2A encoder (2.202 µm): 16 nm apart, within 2 %, one band for the band rule."""
    from geomed_ssl.models.spectral import match_bands

    bare = [f"band_{i}" for i in range(1, 4)]
    envi = [f"Band {i} (0.{400 + 10 * i} Micrometers)" for i in range(1, 4)]
    assert [(m.index, m.how) for m in match_bands(bare, None, envi[::-1])] == [(2, "name"), (1, "name"), (0, "name")]
    assert [m.index for m in match_bands(bare, None, ["Band 1", "Band 2", "Band 3"])] == [0, 1, 2]
    assert [m.index for m in match_bands(bare, None, ["Band 1", "Band 2"])] == [None, None]  # fewer: exact names only
    s2a = match_bands(["B11", "B12"], [1.614, 2.202], ["B11", "B12"], [1.610, 2.186])
    assert [(m.index, m.how) for m in s2a] == [(0, "name"), (1, "name")]


def test_a_spectral_chunk_wider_than_the_data_is_warned_about(caplog) -> None:
    """64-band chunks on a 30-band cube ran silently, one token per position fed 34 bands of zeros."""
    from geomed_ssl.config import load_recipe
    from geomed_ssl.models.encoder import EncoderConfig

    recipe = load_recipe(None, ["model.embedding=spectral", "model.spectral_chunk=64", "data.patch_size=16",
                                "model.patch_size=4"])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        EncoderConfig.from_recipe(recipe.model, recipe.data, 30)
        EncoderConfig.from_recipe(recipe.model, recipe.data, 64)
    assert caplog.text.count("spectral_chunk 64 is more than the data's 30 bands") == 1
    assert "padded with 34 bands of zeros; model.spectral_chunk 30 gives that token" in caplog.text
