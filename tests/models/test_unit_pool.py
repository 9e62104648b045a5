"""model.tokens_per_position: the band-group / chunk tokens of a position pooled into k (UnitPool), so spectral-aware
embeddings cost what plain costs in the blocks; model.group_width sizes the default band groups. Exports with and
without the setting reload to the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from geomed_ssl.checkpoint import load_encoder, save_encoder
from geomed_ssl.cli import app
from geomed_ssl.config import DataConfig, MethodConfig, ModelConfig
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods import build_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from tests.conftest import TINY_DENSE

N_BANDS = 12


def cfg_for(kind: str, k: int | None, **kw) -> EncoderConfig:
    base = dict(in_chans=N_BANDS, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=4,
                embedding=kind, band_names=[f"B{i}" for i in range(N_BANDS)], tokens_per_position=k)
    base.update(kw)
    return EncoderConfig(**base)


@pytest.mark.parametrize("kind", ["grouped", "spectral"])
@pytest.mark.parametrize("k", [1, 2])
def test_pooled_units_give_k_tokens_per_position_and_spatial_outputs(kind: str, k: int) -> None:
    enc = ViTEncoder(cfg_for(kind, k)).eval()
    x = torch.randn(2, N_BANDS, 16, 16)
    tokens, grid = enc.embed(x)
    assert grid == (4, 4) and tokens.shape == (2, k * 16, 32)
    assert enc(x).shape == (2, 1 + 16, 32)
    feats, _ = enc.forward_features(x, [0, 1])
    assert [f.shape for f in feats] == [(2, 16, 32)] * 2


def test_pool_with_zero_queries_and_identity_projection_is_the_mean_of_the_unit_tokens() -> None:
    enc = ViTEncoder(cfg_for("grouped", 1)).eval()
    pool = enc.unit_pool
    with torch.no_grad():
        pool.query.zero_()  # equal scores: every unit weighs 1 / U
        pool.proj.weight.copy_(torch.eye(32))
        pool.proj.bias.zero_()
    x = torch.randn(2, N_BANDS, 16, 16)
    with torch.no_grad():
        units, _ = enc.patch_embed(x)  # (2, U*16, D) unit-major: the tokens before pooling
        tokens, _ = enc.embed(x)
    torch.testing.assert_close(tokens, enc.spatial_tokens(units, (4, 4)) + enc.pos_embed[:, 1:])


def test_pool_weights_depend_on_content_and_not_on_the_order_of_the_units() -> None:
    pool = ViTEncoder(cfg_for("grouped", 1)).unit_pool.eval()
    units = torch.randn(2, 3, 16, 32)  # (B, U, N, D)
    with torch.no_grad():
        pooled = pool(units.transpose(1, 2))
        shuffled = pool(units[:, [2, 0, 1]].transpose(1, 2))
        mean = pool.proj(units.mean(1))
    torch.testing.assert_close(shuffled, pooled, atol=1e-6, rtol=1e-5)
    assert (pooled - mean).abs().max() > 1e-3  # not a plain mean: the queries weigh the units by what they hold


def test_spectral_pooled_encoder_runs_on_a_band_subset() -> None:
    enc = ViTEncoder(cfg_for("spectral", 1, spectral_chunk=2)).eval()
    sub = enc.select_bands(["B0", "B1", "B5", "B7", "B8"])  # 3 chunks instead of 6: the pool takes any count
    x = torch.randn(1, 5, 16, 16)
    with torch.no_grad():
        tokens, _ = enc.embed(x, torch.tensor([0, 1, 5, 7, 8]))
        torch.testing.assert_close(sub.embed(x)[0], tokens)
    assert sub(x).shape == (1, 17, 32)


def test_group_width_sizes_the_default_groups() -> None:
    model = ModelConfig(embedding="grouped", patch_size=4, embed_dim=32, depth=1, num_heads=2, group_width=5)
    cfg = EncoderConfig.from_recipe(model, DataConfig(patch_size=16), N_BANDS)
    assert cfg.band_groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # ceil(12 / 5) = 3 even groups
    assert EncoderConfig.from_recipe(ModelConfig(embedding="grouped"), DataConfig(patch_size=16), N_BANDS) \
        .band_groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # the default width 4 as before


def test_tokens_per_position_is_dropped_for_embeddings_with_one_token_per_position() -> None:
    model = ModelConfig(embedding="wavelength", tokens_per_position=1)
    cfg = EncoderConfig.from_recipe(model, DataConfig(patch_size=16), 2, ["a", "b"], [0.5, 0.6])
    assert cfg.tokens_per_position is None and not hasattr(ViTEncoder(cfg), "unit_pool")


def test_more_pooled_tokens_than_units_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model.tokens_per_position 4 is more than the 3 band groups"):
        cfg_for("grouped", 4)


def test_an_export_config_with_tokens_per_position_on_plain_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs a grouped or spectral embedding \('plain'"):
        EncoderConfig.from_dict({**cfg_for("plain", None).to_dict(), "tokens_per_position": 1})


def test_mae_with_pooled_tokens_predicts_every_band_per_position_and_refuses_several() -> None:
    settings = MethodConfig("mae", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    mae = build_method(settings, cfg_for("grouped", 1), 10)
    out = mae(torch.randn(2, N_BANDS, 16, 16))
    assert out.units is None and out.pred.shape == (2, 16, 16 * N_BANDS) and torch.isfinite(out.loss)
    with pytest.raises(ConfigError, match=r"method mae .* model.tokens_per_position 2 gives neither"):
        build_method(settings, cfg_for("grouped", 2), 10)


def test_methods_needing_one_token_per_position_accept_one_pooled_token() -> None:
    build_method(MethodConfig("cae"), cfg_for("spectral", 1), 10)
    with pytest.raises(ConfigError, match=r"set model.tokens_per_position=1"):
        build_method(MethodConfig("cae"), cfg_for("spectral", None), 10)


def test_pooled_export_reloads_to_the_same_outputs(tmp_path: Path) -> None:
    enc = ViTEncoder(cfg_for("grouped", 1)).eval()
    save_encoder(enc, tmp_path / "encoder")
    back = load_encoder(tmp_path)
    assert back.config.tokens_per_position == 1
    x = torch.randn(2, N_BANDS, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), enc(x))


def test_an_export_written_before_the_setting_reloads_unpooled_with_the_same_outputs(tmp_path: Path) -> None:
    enc = ViTEncoder(cfg_for("grouped", None)).eval()
    save_encoder(enc, tmp_path / "encoder")
    path = tmp_path / "encoder" / "config.json"
    meta = json.loads(path.read_text())
    del meta["encoder"]["tokens_per_position"]  # as an older version wrote it
    path.write_text(json.dumps(meta))
    back = load_encoder(tmp_path)
    assert not hasattr(back, "unit_pool")
    x = torch.randn(2, N_BANDS, 16, 16)
    with torch.no_grad():
        assert back.embed(x)[0].shape == (2, 3 * 16, 32)
        torch.testing.assert_close(back(x), enc(x))


def test_hyperspectral_recipe_pretrains_pooled_grouped_tokens_and_the_export_embeds(raster_dir: Path,
                                                                                     tmp_path: Path) -> None:
    sets = [*TINY_DENSE, "train.max_steps=2", "model.embedding=grouped", "model.group_width=2",
            "model.tokens_per_position=1"]
    args = ["pretrain", "recipes/mae_hyperspectral.yaml", "--data", str(raster_dir), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    enc = load_encoder(tmp_path / "run")
    assert enc.config.tokens_per_position == 1 and len(enc.config.band_groups) == 2
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "run"), str(raster_dir), "--out", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "emb").iterdir())


@pytest.mark.parametrize("k", [1, 2])
def test_pool_is_per_head_attention_over_the_units_of_each_position(k: int) -> None:
    pool = ViTEncoder(cfg_for("spectral", k)).unit_pool.eval()
    units = torch.randn(2, 5, 16, 32)  # (B, U, N, D)
    h, hd = 4, 8
    with torch.no_grad():
        keys = pool.norm(units).reshape(2, 5, 16, h, hd)
        q = pool.query.reshape(k, h, hd) / hd ** 0.5
        w = torch.einsum("bunhe,khe->bkunh", keys, q).softmax(dim=2)  # (B, k, U, N, H)
        want = pool.proj(torch.einsum("bkunh,bunhe->bknhe", w, units.reshape(2, 5, 16, h, hd)).flatten(-2))
        if k > 1:
            want = want + pool.slot_embed[None, :, None]
        torch.testing.assert_close(pool(units.transpose(1, 2)), want.flatten(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind, dims, chunk", [("grouped", 2, 1), ("spectral", 2, 5), ("spectral", 3, 5)])
def test_position_major_tokens_are_the_unit_major_tokens_transposed(kind: str, dims: int, chunk: int) -> None:
    cfg = cfg_for(kind, None, spatial_dims=dims, img_size=(8,) * dims, patch_size=(2,) * dims, spectral_chunk=chunk)
    embed = ViTEncoder(cfg).patch_embed  # spectral, chunk 5 of 12 bands: the last chunk padded
    x = torch.randn(2, N_BANDS, *(8,) * dims)
    with torch.no_grad():
        unit_major, grid = embed(x)
        by_position, _ = embed(x, by_position=True)
    u = cfg.units_per_position
    assert by_position.shape == (2, 4 ** dims, u, 32)
    torch.testing.assert_close(by_position, unit_major.reshape(2, u, -1, 32).transpose(1, 2), atol=1e-5, rtol=1e-5)
