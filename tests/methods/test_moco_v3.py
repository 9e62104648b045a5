"""MoCo v3's frozen random patch projection (``method.freeze_patch_embed``): the projection keeps its initial weights
through training steps, in the base and the momentum encoder, while the rest of the encoder learns."""

from __future__ import annotations

import torch

from geomed_ssl.methods import METHODS
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.train.module import param_groups

ENC = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)


def train_steps(freeze: bool, steps: int = 3) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    torch.manual_seed(0)
    method = METHODS["moco_v3"](ENC, {"proj_hidden_dim": 16, "proj_dim": 8, "freeze_patch_embed": freeze},
                                max_steps=10)
    start = {n: p.detach().clone() for n, p in method.encoder.named_parameters()}
    optimiser = torch.optim.AdamW(param_groups(method, 0.1, set()), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        views = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
        out = method.training_loss({"views": {"global": views, "local": []}, "index": torch.arange(4)}, step, g)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        method.after_step(step)
    return start, method


def test_frozen_patch_embed_keeps_its_random_weights_in_both_encoders() -> None:
    start, method = train_steps(freeze=True)
    for name, p in method.encoder.named_parameters():
        moved = not torch.equal(p, start[name])
        assert moved != name.startswith("patch_embed."), name
    for p, q in zip(method.encoder.patch_embed.parameters(), method.momentum_encoder.patch_embed.parameters()):
        assert torch.equal(p, q)
    trained = {id(p) for group in param_groups(method, 0.1, set()) for p in group["params"]}
    assert not any(id(p) in trained for p in method.encoder.patch_embed.parameters())


def test_patch_embed_learns_by_default() -> None:
    start, method = train_steps(freeze=False)
    assert all(not torch.equal(p, start[f"patch_embed.{n}"]) for n, p in method.encoder.patch_embed.named_parameters())
