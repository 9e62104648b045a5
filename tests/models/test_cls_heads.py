"""Classification heads (linear probe / MLP, CLS / mean pooling) and layer-wise lr-decay parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomed_ssl.errors import ConfigError
from geomed_ssl.models.cls_heads import ClassificationModel, layer_decay_groups
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.seg_decoder import SegmentationModel


def tiny_encoder(nd: int = 2, depth: int = 2) -> ViTEncoder:
    img, patch = ((16, 16), (8, 8)) if nd == 2 else ((8, 8, 8), (4, 4, 4))
    return ViTEncoder(EncoderConfig(in_chans=3, spatial_dims=nd, img_size=img, patch_size=patch, embed_dim=24,
                                    depth=depth, num_heads=2))


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_logits_and_features_shapes(nd, head, pool):
    model = ClassificationModel(tiny_encoder(nd), num_classes=5, head=head, pool=pool)
    x = torch.randn(4, 3, *(16, 16) if nd == 2 else (8, 8, 8))
    assert model(x).shape == (4, 5)
    assert model.features(x).shape == (4, 24)


def test_linear_probe_is_batchnorm_without_affine_then_linear():
    model = ClassificationModel(tiny_encoder(), num_classes=5, head="linear")
    bn, fc = model.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and fc.out_features == 5
    mlp = ClassificationModel(tiny_encoder(), num_classes=5, head="mlp").head
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear] and mlp[0].out_features == 24


def test_pool_modes_pick_cls_or_mean_of_patch_tokens():
    enc = tiny_encoder().eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = enc(x)  # (2, 1+4, 24)
    cls = ClassificationModel(enc, 2, pool="cls").eval()
    mean = ClassificationModel(enc, 2, pool="mean").eval()
    torch.testing.assert_close(cls.features(x), tokens[:, 0])
    torch.testing.assert_close(mean.features(x), tokens[:, 1:].mean(1))
    torch.testing.assert_close(cls(x), cls.head(cls.features(x)))  # the head fits on cached features


def test_parameter_helpers_split_head_and_encoder():
    model = ClassificationModel(tiny_encoder(), num_classes=3)
    head, enc = model.head_parameters(), model.encoder_parameters()
    assert len(head) + len(enc) == len(list(model.parameters()))
    assert {id(p) for p in head}.isdisjoint(id(p) for p in enc)


def test_unknown_head_or_pool_is_a_config_error():
    with pytest.raises(ConfigError, match="linear, mlp"):
        ClassificationModel(tiny_encoder(), 3, head="svm")
    with pytest.raises(ConfigError, match="cls, mean"):
        ClassificationModel(tiny_encoder(), 3, pool="max")


def _by_name(model: nn.Module, groups: list[dict]) -> dict[str, dict]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: g for g in groups for p in g["params"]}


@pytest.mark.parametrize("kind", ["cls", "seg"])
def test_layer_decay_groups_scale_monotone_head_at_base_lr(kind):
    depth = 4
    enc = tiny_encoder(depth=depth)
    model = (ClassificationModel(enc, 3, head="mlp") if kind == "cls"
             else SegmentationModel(enc, 3, layers=[1, 3], feature_size=4))
    groups = layer_decay_groups(model, depth, decay=0.5, base_lr=1e-3, weight_decay=0.05)
    by_name = _by_name(model, groups)
    assert len(by_name) == len(list(model.parameters()))  # every trainable parameter once
    scale = {n: g["lr_scale"] for n, g in by_name.items()}
    assert scale["encoder.patch_embed.proj.weight"] == scale["encoder.cls_token"] == 0.5 ** (depth + 1)
    blocks = [scale[f"encoder.blocks.{i}.attn.qkv.weight"] for i in range(depth)]
    assert blocks == sorted(blocks) and len(set(blocks)) == depth and blocks[0] > scale["encoder.cls_token"]
    head = [n for n in by_name if not n.startswith("encoder.")]
    assert head and all(by_name[n]["lr"] == 1e-3 and scale[n] == 1.0 for n in head)
    assert by_name["encoder.norm.weight"]["lr"] == 1e-3
    for name, group in by_name.items():
        p = dict(model.named_parameters())[name]
        no_decay = p.ndim <= 1 or name == "encoder.cls_token"
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    torch.optim.AdamW(groups)  # groups are accepted as they are


def test_layer_decay_groups_skip_frozen_parameters():
    model = ClassificationModel(tiny_encoder(), num_classes=3)
    for p in model.encoder_parameters():
        p.requires_grad_(False)
    groups = layer_decay_groups(model, 2, decay=0.75, base_lr=0.1, weight_decay=0.0)
    assert sum(len(g["params"]) for g in groups) == len(model.head_parameters())
    assert all(g["lr"] == 0.1 for g in groups)
    with pytest.raises(ConfigError, match="decay"):
        layer_decay_groups(model, 2, decay=1.5, base_lr=0.1, weight_decay=0.0)


def test_layer_decay_puts_grouped_tokens_unit_pool_with_the_patch_embedding():
    """``unit_pool`` runs in the embedding stage, before block 0: it trains at the patch embedding's rate."""
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    enc = ViTEncoder(EncoderConfig(in_chans=4, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=3,
                                   num_heads=2, embedding="grouped", band_groups=[[0, 1], [2, 3]],
                                   tokens_per_position=1))
    model = ClassificationModel(enc, 3)
    by_name = _by_name(model, layer_decay_groups(model, 3, decay=0.5, base_lr=1e-3, weight_decay=0.05))
    pooled = [n for n in by_name if n.startswith("encoder.unit_pool.")]
    assert pooled and {by_name[n]["layer_id"] for n in pooled} == {0}
