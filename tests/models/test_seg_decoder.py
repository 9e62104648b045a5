"""UNETR decoder: equals MONAI UNETR at its own configuration; shapes for any patch, depth and taps; errors; grads."""

from __future__ import annotations

import monai.networks.nets.unetr as monai_unetr
import pytest
import torch
from monai.networks.nets import UNETR
from torch import nn

from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.seg_decoder import SegmentationModel, UNETRDecoder, tap_levels, up_stages


def monai_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MONAI UNETR decoder keys -> ours: encoder{l+1} -> skips.l, decoder{l+2} -> ups.l; the ViT is dropped."""
    names = {"encoder1": "encoder1", "out": "out"}
    names.update({f"encoder{lvl + 1}": f"skips.{lvl}" for lvl in (1, 2, 3)})
    names.update({f"decoder{lvl + 2}": f"ups.{lvl}" for lvl in range(4)})
    out = {}
    for key, value in state.items():
        top, rest = key.split(".", 1)
        if top in names:
            out[f"{names[top]}.{rest}"] = value
    return out


class FixedViT(nn.Module):
    """Stands in for MONAI's ViT inside UNETR: returns given (final, hidden_states_out)."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.result: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.result


def monai_pair(nd: int, monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[UNETR, UNETRDecoder]:
    """MONAI UNETR at its configuration (patch 16, 12 blocks, taps 3/6/9, feature 16; hidden 96 to stay fast) and
    our decoder with MONAI's decoder weights loaded (strict)."""
    if monkeypatch is not None:
        monkeypatch.setattr(monai_unetr, "ViT", FixedViT)
    torch.manual_seed(0)
    ref = UNETR(1, 3, 32, feature_size=16, hidden_size=96, mlp_dim=4 * 96, num_heads=12, spatial_dims=nd).eval()
    ours = UNETRDecoder(nd, 96, (16,) * nd, 3, in_chans=1, out_chans=3, feature_size=16).eval()
    ours.load_state_dict(monai_to_ours(ref.state_dict()), strict=True)
    return ref, ours


@pytest.mark.parametrize("nd", [3, 2])
def test_equals_monai_unetr_decoder_given_same_hidden_states(nd, monkeypatch):
    ref, ours = monai_pair(nd, monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, *(32,) * nd, generator=g)
    hidden = [torch.randn(2, 2**nd, 96, generator=g) for _ in range(12)]  # 2^nd tokens: 32 / patch 16 per axis
    final = torch.randn(2, 2**nd, 96, generator=g)
    ref.vit.result = (final, hidden)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x, [hidden[3], hidden[6], hidden[9]], (2,) * nd, final)
    assert got.shape == (2, 3, *(32,) * nd)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_equals_monai_unetr_end_to_end_with_its_vit():
    import einops  # noqa: F401  MONAI's ViT needs it; a [dev] requirement, so a missing one fails, never skips
    ref, ours = monai_pair(3)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        final, hidden = ref.vit(x)
        tokens = ref.vit.patch_embedding(x)
        for blk in ref.vit.blocks[:4]:
            tokens = blk(tokens)
        torch.testing.assert_close(tokens, hidden[3], atol=0, rtol=0)  # hidden_states_out[3] = 0-based block 3
        torch.testing.assert_close(ours(x, [hidden[3], hidden[6], hidden[9]], (2, 2, 2), final), ref(x),
                                   atol=1e-5, rtol=0)


def test_tap_levels_generalise_monai():
    assert tap_levels(3, 4) == [1, 2, 3]  # MONAI: blocks 3, 6, 9 -> encoder2, 3, 4
    assert tap_levels(1, 4) == [3]  # the deepest tap always feeds the first up-block
    assert tap_levels(2, 4) == [2, 3]
    assert tap_levels(4, 3) == [1, 1, 2, 2]  # shared levels are concatenated
    assert tap_levels(2, 1) == [1, 1]  # patch 2: joined to the final tokens
    assert tap_levels(0, 4) == []


def test_up_stages_per_axis_and_unsupported_patches():
    assert up_stages((16, 16, 16)) == [(2, 2, 2)] * 4
    assert up_stages((8, 8, 2)) == [(2, 2, 2), (2, 2, 1), (2, 2, 1)]  # level 1 -> 0 first in the list
    assert up_stages((1, 4)) == [(1, 2), (1, 2)]
    for bad in [(6, 6), (16, 12, 16), (1, 1), (0, 4)]:
        with pytest.raises(ConfigError, match="power of two"):
            up_stages(bad)


def tiny_encoder(nd: int, patch: tuple[int, ...], depth: int = 2, in_chans: int = 2) -> ViTEncoder:
    img = tuple(2 * p for p in patch)
    return ViTEncoder(EncoderConfig(in_chans=in_chans, spatial_dims=nd, img_size=img, patch_size=patch, embed_dim=24,
                                    depth=depth, num_heads=2))


@pytest.mark.parametrize(
    "patch,depth,layers",
    [
        ((4, 4), 2, [0]),
        ((8, 8), 4, [0, 1, 2]),
        ((16, 16), 4, [1, 3]),
        ((16, 16), 4, [0, 1, 2, 3, 3]),
        ((4, 8), 2, [0, 1]),
        ((2, 2), 2, [0, 1]),
        ((1, 4), 2, []),
        ((4, 4, 4), 2, [1]),
        ((8, 8, 4), 2, [0, 1]),
        ((16, 16, 4), 4, [0, 1, 2]),
        ((16, 16, 16), 2, [-1]),
    ],
)
def test_segmentation_shapes_any_patch_depth_and_taps(patch, depth, layers):
    nd = len(patch)
    enc = tiny_encoder(nd, patch, depth)
    model = SegmentationModel(enc, num_classes=3, layers=layers, feature_size=4)
    shape = tuple(2 * p for p in patch)
    x = torch.randn(2, 2, *shape)
    assert model(x).shape == (2, 3, *shape)
    assert model.layers == sorted({i % depth for i in layers})


def test_other_window_sizes_work():
    model = SegmentationModel(tiny_encoder(2, (8, 8)), num_classes=2, layers=[0], feature_size=4)
    assert model(torch.randn(1, 2, 24, 40)).shape == (1, 2, 24, 40)


def test_gradient_reaches_the_encoder():
    model = SegmentationModel(tiny_encoder(3, (4, 4, 4)), num_classes=2, layers=[0], feature_size=4)
    model(torch.randn(2, 2, 8, 8, 8)).logsumexp(1).mean().backward()
    enc = model.encoder
    for param in (enc.patch_embed.proj.weight, enc.blocks[0].attn.qkv.weight, enc.blocks[1].mlp.fc2.weight,
                  enc.norm.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert {id(p) for p in model.head_parameters()}.isdisjoint(id(p) for p in model.encoder_parameters())


def test_bad_layers_and_shapes_raise_readable_errors():
    enc = tiny_encoder(2, (8, 8))
    with pytest.raises(ConfigError, match="2 blocks"):
        SegmentationModel(enc, num_classes=2, layers=[2])
    with pytest.raises(ConfigError, match="power of two"):
        SegmentationModel(tiny_encoder(2, (6, 6)), num_classes=2, layers=[0])
    dec = UNETRDecoder(2, 24, (8, 8), 1, in_chans=2, out_chans=2, feature_size=4)
    tokens = torch.randn(1, 4, 24)
    with pytest.raises(DataError, match="token grid"):
        dec(torch.randn(1, 2, 16, 24), [tokens], (2, 2), tokens)
    with pytest.raises(ConfigError, match="1 encoder taps"):
        dec(torch.randn(1, 2, 16, 16), [tokens, tokens], (2, 2), tokens)


@pytest.mark.parametrize("patch,layers", [((4, 4), [0]), ((8, 4), [0, 1]), ((4, 4, 4), [1]), ((2, 4, 8), [])])
def test_linear_head_upsamples_token_logits_to_the_input(patch, layers):
    nd = len(patch)
    model = SegmentationModel(tiny_encoder(nd, patch), num_classes=3, layers=layers, head="linear")
    x = torch.randn(2, 2, *(2 * p for p in patch))
    assert model(x).shape == (2, 3, *x.shape[2:])
    assert not any(p.requires_grad for p in model.decoder.norm.parameters())  # BatchNorm without affine
    assert model.decoder.out.in_channels == 24 * (len(model.layers) + 1)


def test_linear_head_logits_are_bilinear_upsampled_token_logits():
    model = SegmentationModel(tiny_encoder(2, (4, 4)), num_classes=2, layers=[0], head="linear").eval()
    x = torch.randn(1, 2, 8, 8)
    tokens, grid = model.encoder.embed(x)
    final, taps = model.encoder.run_blocks(model.encoder.add_cls(tokens), model.layers)
    feats = torch.cat([taps[0][:, 1:], final[:, 1:]], -1).transpose(1, 2).reshape(1, -1, *grid)
    coarse = model.decoder.out(model.decoder.norm(feats))
    expect = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(x), expect)


def test_unknown_head_is_refused():
    with pytest.raises(ConfigError, match="unetr, linear"):
        SegmentationModel(tiny_encoder(2, (4, 4)), num_classes=2, layers=[0], head="upernet")



@pytest.mark.parametrize("nd", [3, 2])
def test_fresh_unetr_up_stages_start_as_nearest_upsampling(nd):
    """Each stride-k transposed conv starts with the same weights at all k^d offsets, so it upsamples without the
    period-2 checkerboard that independent random offsets give (BraTS predictions came out striped along one axis
    after a 150-step fine-tune)."""
    torch.manual_seed(0)
    model = SegmentationModel(tiny_encoder(nd, (8,) * nd), num_classes=2, layers=[0], feature_size=4)
    ups = [m for m in model.decoder.modules() if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d))]
    assert len(ups) >= 3  # three x2 stages for patch 8, plus the skips' own
    for m in ups:
        y = m(torch.randn(1, m.in_channels, *(3,) * nd)).detach()  # (1, out, *(3 * k))
        k = m.stride[0]
        origin = y[(Ellipsis, *[slice(0, None, k)] * nd)]
        nearest = nn.functional.interpolate(origin, scale_factor=k, mode="nearest")
        torch.testing.assert_close(y, nearest)
