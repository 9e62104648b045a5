"""The rotation pretext task is learnable by a depth-2 model on structured windows and stays near chance on
rotation-invariant noise (trained in-process, no CLI: the check is on the task, not the plumbing)."""

from __future__ import annotations

import torch

from geomed_ssl.methods.rotation import Rotation
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=2, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2)


def lit_from_one_side(b: int, g: torch.Generator) -> torch.Tensor:
    """(b, 2, 16, 16) windows bright at the top and dark at the bottom, with random texture: orientation is real."""
    ramp = torch.linspace(1.5, -1.5, 16)[:, None].expand(16, 16)
    return ramp + 0.5 * torch.randn(b, 2, 16, 16, generator=g)


def isotropic_noise(b: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(b, 2, 16, 16, generator=g)


def train_and_score(make, steps: int = 80) -> float:
    """Accuracy of a fresh Rotation model on 256 held-out windows after ``steps`` steps of batch 16."""
    torch.manual_seed(0)
    method = Rotation(ENC, {"head_hidden_dim": 64}, max_steps=steps)
    opt = torch.optim.AdamW(method.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = {"image": make(16, g), "index": torch.arange(step * 16, step * 16 + 16)}
        out = method.training_loss(batch, step, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    method.eval()
    with torch.no_grad():
        batch = {"image": make(256, g), "index": torch.arange(10**6, 10**6 + 256)}
        return float(method.training_loss(batch, 0, torch.Generator().manual_seed(7)).logs["accuracy"])


def test_rotation_head_learns_the_task_on_windows_with_an_up() -> None:
    assert train_and_score(lit_from_one_side) >= 0.95


def test_rotation_head_stays_near_chance_on_rotation_invariant_noise() -> None:
    assert train_and_score(isotropic_noise) < 0.35
