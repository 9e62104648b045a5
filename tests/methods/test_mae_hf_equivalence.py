"""Our MAE equals HF ``ViTMAEForPreTraining`` given the same weights, pixels and noise (13 bands, 32 px, patch 8)."""

from __future__ import annotations

import pytest
import torch
import transformers  # a [dev] requirement: a missing one fails the run, never skips it

from geomed_ssl.config import MethodConfig
from geomed_ssl.methods.mae import MAE
from geomed_ssl.methods.masking import patchify, unpatchify
from geomed_ssl.models.encoder import EncoderConfig

BANDS, SIZE, PATCH = 13, 32, 8


def hf_model(norm_pix_loss: bool):
    cfg = transformers.ViTMAEConfig(
        image_size=SIZE, patch_size=PATCH, num_channels=BANDS, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=256, decoder_hidden_size=32, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4, decoder_intermediate_size=128, mask_ratio=0.75, norm_pix_loss=norm_pix_loss,
        qkv_bias=True, layer_norm_eps=1e-6, hidden_act="gelu",
    )
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    # transformers 5 leaves the sin-cos buffers at zero when built from a config (the patch projection is marked
    # initialised before the embeddings' own init runs); run HF's own sin-cos init so we compare against it.
    model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    with torch.no_grad():
        model.vit.embeddings.initialize_weights()
        model.decoder.initialize_weights((SIZE // PATCH) ** 2)
    return model


def our_model(norm_pix_loss: bool) -> MAE:
    enc = EncoderConfig(in_chans=BANDS, img_size=(SIZE, SIZE), patch_size=(PATCH, PATCH), embed_dim=64, depth=2,
                        num_heads=4, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6)
    method = MethodConfig(mask_ratio=0.75, norm_pix_loss=norm_pix_loss, decoder_embed_dim=32, decoder_depth=2,
                          decoder_num_heads=4)
    model = MAE(enc, method, max_steps=1).eval()
    # as after training: the initialisation's zero biases and unit LayerNorm scales would hide a dropped bias or scale
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the fixed sin-cos tables stay as they are
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


# HF layer parameter names: transformers 5 (first) and 4.x (second).
HF_LAYER_NAMES = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
    "proj": ("attention.o_proj", "attention.output.dense"),
    "fc1": ("mlp.fc1", "intermediate.dense"),
    "fc2": ("mlp.fc2", "output.dense"),
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
}


def _hf_layer_prefix(hf_sd: dict, stack: str, i: int) -> str:
    options = {"encoder": ("vit.layers", "vit.encoder.layer"), "decoder": ("decoder.decoder_layers",) * 2}[stack]
    for prefix in options:
        if any(k.startswith(f"{prefix}.{i}.") for k in hf_sd):
            return f"{prefix}.{i}"
    raise KeyError(f"no HF {stack} layer {i}")


def _hf_name(hf_sd: dict, layer: str, key: str, param: str) -> str:
    for alias in HF_LAYER_NAMES[key]:
        name = f"{layer}.{alias}.{param}"
        if name in hf_sd:
            return name
    raise KeyError(f"{layer}.{key}.{param}")


def ours_to_hf(ours: MAE, hf) -> None:
    """Copy our weights into the HF model: timm's fused qkv is split into HF's q/k/v."""
    sd = ours.state_dict()
    hf_sd = hf.state_dict()
    new: dict[str, torch.Tensor] = {
        "vit.embeddings.cls_token": sd["encoder.cls_token"],
        "vit.embeddings.patch_embeddings.projection.weight": sd["encoder.patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": sd["encoder.patch_embed.proj.bias"],
        "vit.layernorm.weight": sd["encoder.norm.weight"],
        "vit.layernorm.bias": sd["encoder.norm.bias"],
        "decoder.mask_token": sd["decoder.mask_token"],
        "decoder.decoder_embed.weight": sd["decoder.embed.weight"],
        "decoder.decoder_embed.bias": sd["decoder.embed.bias"],
        "decoder.decoder_norm.weight": sd["decoder.norm.weight"],
        "decoder.decoder_norm.bias": sd["decoder.norm.bias"],
        "decoder.decoder_pred.weight": sd["decoder.pred.weight"],
        "decoder.decoder_pred.bias": sd["decoder.pred.bias"],
    }
    for stack, depth in (("encoder", 2), ("decoder", 2)):
        for i in range(depth):
            ours_prefix = f"{stack}.blocks.{i}"
            layer = _hf_layer_prefix(hf_sd, stack, i)
            for param in ("weight", "bias"):
                q, k, v = sd[f"{ours_prefix}.attn.qkv.{param}"].chunk(3, dim=0)
                for key, value in (("q", q), ("k", k), ("v", v)):
                    new[_hf_name(hf_sd, layer, key, param)] = value
                for key, ours_key in (("proj", "attn.proj"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2"),
                                      ("norm1", "norm1"), ("norm2", "norm2")):
                    new[_hf_name(hf_sd, layer, key, param)] = sd[f"{ours_prefix}.{ours_key}.{param}"]
    missing = set(hf_sd) - set(new) - {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"}
    assert not missing, f"unmapped HF parameters: {sorted(missing)}"
    hf.load_state_dict(new, strict=False)


def test_position_embeddings_equal_hf_sincos():
    hf, ours = hf_model(True), our_model(True)
    torch.testing.assert_close(ours.encoder.pos_embed, hf.vit.embeddings.position_embeddings.data, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.decoder.pos_embed, hf.decoder.decoder_pos_embed.data, atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_and_logits_equal_hf(norm_pix_loss: bool):
    torch.manual_seed(0)
    ours, hf = our_model(norm_pix_loss), hf_model(norm_pix_loss)
    ours_to_hf(ours, hf)
    pixels = torch.randn(3, BANDS, SIZE, SIZE)
    noise = torch.rand(3, (SIZE // PATCH) ** 2)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, noise=noise)
        out = ours(pixels, noise=noise)
    torch.testing.assert_close(out.mask, ref.mask.to(out.mask.dtype), atol=0, rtol=0)
    torch.testing.assert_close(out.ids_restore, ref.ids_restore, atol=0, rtol=0)
    torch.testing.assert_close(out.pred, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_loss_gradients_equal_hf():
    torch.manual_seed(1)
    ours, hf = our_model(True), hf_model(True)
    ours_to_hf(ours, hf)
    pixels = torch.randn(2, BANDS, SIZE, SIZE)
    noise = torch.rand(2, (SIZE // PATCH) ** 2)
    ours(pixels, noise=noise).loss.backward()
    hf(pixel_values=pixels, noise=noise).loss.backward()
    torch.testing.assert_close(ours.encoder.patch_embed.proj.weight.grad,
                               hf.vit.embeddings.patch_embeddings.projection.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.decoder.pred.weight.grad, hf.decoder.decoder_pred.weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_patchify_matches_hf_ordering():
    hf = hf_model(False)
    pixels = torch.randn(2, BANDS, SIZE, SIZE)
    ours = patchify(pixels, (PATCH, PATCH))
    torch.testing.assert_close(ours, hf.patchify(pixels), atol=0, rtol=0)
    torch.testing.assert_close(unpatchify(ours, (PATCH, PATCH), (SIZE // PATCH,) * 2),
                               hf.unpatchify(ours, (SIZE, SIZE)), atol=0, rtol=0)
