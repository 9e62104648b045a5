"""CAE's reconstruction leaves nodata out, value by value, as MAE does: the zero-filled nodata pixels of a masked
token are neither targets nor part of its per-patch normalisation."""

from __future__ import annotations

import torch

from geomed_ssl.methods import METHODS
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=2, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)


def test_nodata_pixels_of_a_masked_token_are_no_target() -> None:
    torch.manual_seed(0)
    cae = METHODS["cae"](ENC, {"regressor_depth": 1, "decoder_depth": 1, "mask_ratio": 0.5}, max_steps=10)
    image = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :2, :3] = False  # 6 of token 0's 16 pixels: still over half valid, so the token counts
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2]])  # tokens 0 and 2 masked (the highest noise)
    captured = {}
    cae.pixels.register_forward_hook(lambda _m, _a, out: captured.update(pred=out))
    out = cae(image * valid[:, None], valid, noise)
    pred = captured["pred"]  # (1, 2, 16 * 2): the masked tokens in rising noise: token 2, then token 0
    pred.retain_grad()
    out["recon_loss"].backward()
    grad = pred.grad[0, 1].reshape(4, 4, 2).permute(2, 0, 1)  # token 0 (patchify: pixel-major, bands inside)
    nodata = ~valid[0, :4, :4]
    assert torch.count_nonzero(grad[:, nodata]) == 0 and torch.count_nonzero(grad[:, ~nodata]) == 2 * 10
    assert torch.count_nonzero(pred.grad[0, 0]) == 32  # token 2, all valid: every value a target
