"""Frozen per-image features of an encoder (classification): each tapped block's token mean and spread, and the
normed CLS token."""

from __future__ import annotations

import numpy as np
import torch

from geomed_ssl.compare.features import encoder_image_fn
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def test_image_features_are_the_mean_and_std_of_each_tapped_blocks_tokens_and_the_cls_token() -> None:
    torch.manual_seed(0)
    enc = ViTEncoder(EncoderConfig(in_chans=3, spatial_dims=2, img_size=(16, 16), patch_size=(4, 4), embed_dim=32,
                                   depth=2, num_heads=2)).eval()
    image = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    got = encoder_image_fn(enc, [0, 1], lambda i: image)(0)
    with torch.no_grad():
        feats, _ = enc.forward_features(torch.from_numpy(image)[None], [0, 1])
    assert got.shape == (2 * 2 * 32 + 32,)
    for k, f in enumerate(feats):
        tokens = f[0].numpy()  # (N, D) patch tokens only
        assert tokens.shape == (16, 32)
        np.testing.assert_allclose(got[k * 64:k * 64 + 32], tokens.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[k * 64 + 32:(k + 1) * 64], tokens.std(0), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # what the two-view and self-distillation losses read: the CLS token after the final norm
        cls = enc.norm(enc.blocks[1](enc.blocks[0](enc.add_cls(enc.embed(torch.from_numpy(image)[None])[0]))))[0, 0]
    np.testing.assert_allclose(got[128:], cls.numpy(), rtol=1e-5, atol=1e-6)


def test_memo_reads_each_image_once_while_they_fit_and_one_at_a_time_when_they_do_not() -> None:
    from geomed_ssl.compare.features import memo

    reads: list[int] = []

    def load(i: int) -> np.ndarray:
        reads.append(i)
        return np.zeros(250, np.float32)  # 1000 bytes

    small = memo(load, max_bytes=10_000)
    for i in [0, 1, 2, 0, 1, 2]:
        small(i)
    assert reads == [0, 1, 2]
    reads.clear()
    tight = memo(load, max_bytes=1_500)  # room for one: the one held is dropped before the next is read
    for i in [0, 0, 1, 1, 0]:
        tight(i)
    assert reads == [0, 1, 0]
