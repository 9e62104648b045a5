"""ViT encoder: shapes in 2D and 3D, other input sizes, selected-layer features, config round-trip, init."""

from __future__ import annotations

import json
import math

import pytest
import torch

from geomed_ssl.config import DataConfig, ModelConfig
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.pos_embed import sincos_pos_embed


def tiny(**kw) -> EncoderConfig:
    base = dict(in_chans=4, img_size=(32, 32), patch_size=(8, 8), embed_dim=32, depth=3, num_heads=4)
    base.update(kw)
    return EncoderConfig(**base)


@pytest.mark.parametrize("bands", [1, 13, 200])
def test_2d_shapes_any_band_count(bands):
    enc = ViTEncoder(tiny(in_chans=bands))
    assert enc(torch.randn(2, bands, 32, 32)).shape == (2, 1 + 16, 32)


def test_3d_shapes_with_anisotropic_patch():
    cfg = tiny(in_chans=2, spatial_dims=3, img_size=(8, 16, 16), patch_size=(2, 4, 8), embed_dim=48)
    enc = ViTEncoder(cfg)
    assert cfg.grid == (4, 4, 2)
    assert enc(torch.randn(2, 2, 8, 16, 16)).shape == (2, 1 + 32, 48)
    feats, grid = enc.forward_features(torch.randn(1, 2, 8, 16, 16), [1])
    assert grid == (4, 4, 2) and feats[0].shape == (1, 32, 48)


def test_other_input_size_recomputes_sincos_for_its_grid():
    enc = ViTEncoder(tiny())
    x = torch.randn(1, 4, 48, 24)
    assert enc(x).shape == (1, 1 + 18, 32)
    tokens, grid = enc.embed(x)
    raw, _ = enc.patch_embed(x)
    assert grid == (6, 3)
    torch.testing.assert_close(tokens - raw, sincos_pos_embed((6, 3), 32)[None].expand_as(raw))
    torch.testing.assert_close(enc.pos_embed[0, 1:], sincos_pos_embed((4, 4), 32))


def test_forward_features_returns_raw_spatial_tokens_of_chosen_blocks():
    enc = ViTEncoder(tiny()).eval()
    x = torch.randn(2, 4, 32, 32)
    feats, grid = enc.forward_features(x, [0, -1])
    assert grid == (4, 4) and [f.shape for f in feats] == [(2, 16, 32)] * 2
    tokens, _ = enc.embed(x)
    final, raw = enc.run_blocks(enc.add_cls(tokens), [0, 2])
    torch.testing.assert_close(feats[0], raw[0][:, 1:])
    torch.testing.assert_close(feats[1], raw[1][:, 1:])
    torch.testing.assert_close(enc.norm(raw[1]), enc(x))
    with pytest.raises(ConfigError):
        enc.forward_features(x, [3])


def test_attention_uses_fused_sdpa():
    enc = ViTEncoder(tiny())
    assert all(blk.attn.fused_attn for blk in enc.blocks)
    assert all(blk.norm1.eps == 1e-6 for blk in enc.blocks)


def test_config_json_round_trip():
    cfg = tiny(spatial_dims=3, img_size=[16, 16, 16], patch_size=4, embed_dim=48, band_names=["t1", "t2", "fl", "t1c"],
               wavelengths=[None, None, None, None], stats={"bands": [], "version": 1})
    assert cfg.img_size == (16, 16, 16) and cfg.patch_size == (4, 4, 4)
    back = EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.img_size, tuple)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown key 'encoder\.bogus'"):
        EncoderConfig.from_dict({**tiny().to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="model.patch_size"):
        tiny(img_size=(30, 32))
    with pytest.raises(ConfigError, match="model.embed_dim"):
        tiny(embed_dim=30, num_heads=3)
    with pytest.raises(ConfigError, match=r"encoder\.embedding must be one of plain, .*got 'nope'"):
        tiny(embedding="nope")


def test_wrong_band_count_is_a_data_error():
    enc = ViTEncoder(tiny())
    with pytest.raises(DataError, match="in_chans"):
        enc(torch.randn(1, 3, 32, 32))
    with pytest.raises(DataError, match="multiple"):
        enc(torch.randn(1, 4, 30, 32))


def test_from_recipe():
    cfg = EncoderConfig.from_recipe(ModelConfig(patch_size=[2, 4, 4], embed_dim=48, depth=2, num_heads=4),
                                    DataConfig(kind="volume", patch_size=[8, 16, 16]), in_chans=1, band_names=["ct"])
    assert cfg.spatial_dims == 3 and cfg.grid == (4, 4, 4) and cfg.band_names == ["ct"]


def test_mae_style_init():
    enc = ViTEncoder(tiny(embed_dim=64))
    w = enc.patch_embed.proj.weight.view(64, -1)
    assert w.abs().max() <= math.sqrt(6 / (w.shape[0] + w.shape[1])) + 1e-6
    assert 0.01 < enc.cls_token.std() < 0.03
    qkv = enc.blocks[0].attn.qkv
    assert torch.all(qkv.bias == 0) and qkv.weight.abs().max() <= math.sqrt(6 / (64 + 192)) + 1e-6
    assert enc.no_weight_decay() <= {n for n, _ in enc.named_parameters()} | {n for n, _ in enc.named_buffers()}


def test_every_embedding_option_has_a_patch_embedding() -> None:
    from geomed_ssl.config import EMBEDDINGS
    from geomed_ssl.models.patch_embed import PATCH_EMBEDS

    assert tuple(PATCH_EMBEDS) == EMBEDDINGS
