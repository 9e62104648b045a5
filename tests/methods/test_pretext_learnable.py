"""The rotation, jigsaw and context pretext tasks are learnable by a depth-2 model on structured windows and stay
near chance on noise that carries no answer (trained in-process, no CLI: the check is on the task, not the
plumbing).

Jigsaw tiles and context patches are standardised per band one by one, so a brightness ramp across the window tells
them nothing; their structured windows instead put the answer in each crop's texture (stripe frequency depends on
the absolute position), which survives standardisation and the jitter (stripes look alike wherever they are cut).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch

from geomed_ssl.methods.base import SSLMethod
from geomed_ssl.methods.context import Context
from geomed_ssl.methods.jigsaw import Jigsaw
from geomed_ssl.methods.rotation import Rotation
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=2, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2)
JIGSAW_SIDE = 48  # 3x3 cells of 16 px, 12 px tiles (3x3 tokens) jittered by up to 4 px
CONTEXT_SIDE = 40  # the default layout: 8 px patches, 4 px gap, 1 px jitter

Maker = Callable[[int, torch.Generator], torch.Tensor]


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: a 32-wide model gains nothing from a second one, and on a shared, loaded CPU the
    threads' synchronisation made a 5 s (CPU) run take 70 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lit_from_one_side(b: int, g: torch.Generator) -> torch.Tensor:
    """(b, 2, 16, 16) windows bright at the top and dark at the bottom, with random texture: orientation is real."""
    ramp = torch.linspace(1.5, -1.5, 16)[:, None].expand(16, 16)
    return ramp + 0.5 * torch.randn(b, 2, 16, 16, generator=g)


def isotropic_noise(b: int, g: torch.Generator, side: int = 16) -> torch.Tensor:
    return torch.randn(b, 2, side, side, generator=g)


def stripes(phase: torch.Tensor, b: int, g: torch.Generator) -> torch.Tensor:
    """(b, 2, S, S) from a (S,) phase profile: band 0 horizontal stripes ``cos(phase[row])``, band 1 vertical ones
    ``cos(phase[col])``, each sample with its own random offsets, plus noise."""
    side = phase.shape[0]
    offset = 2 * math.pi * torch.rand(b, 2, 1, 1, generator=g)
    rows = torch.cos(phase[:, None] + offset[:, 0]).expand(b, side, side)  # (b, S, S)
    cols = torch.cos(phase[None, :] + offset[:, 1]).expand(b, side, side)
    return torch.stack([rows, cols], dim=1) + 0.3 * torch.randn(b, 2, side, side, generator=g)


def textured_cells(b: int, g: torch.Generator) -> torch.Tensor:
    """(b, 2, 48, 48) windows whose 3x3 cells each have their own texture: stripe periods 3 / 5 / 8 px by the cell's
    row in band 0 and by its column in band 1, so every tile names the cell it was cut from."""
    cell_of = torch.arange(JIGSAW_SIDE) // (JIGSAW_SIDE // 3)  # (S,) cell row (or column) of every pixel
    period = torch.tensor([3.0, 5.0, 8.0])[cell_of]
    return stripes(2 * math.pi * torch.arange(JIGSAW_SIDE) / period, b, g)


def chirped(b: int, g: torch.Generator) -> torch.Tensor:
    """(b, 2, 40, 40) windows of stripes whose frequency rises from 0.06 to 0.4 cycles/px down the rows (band 0) and
    across the columns (band 1): a patch's texture says where it sits, so a pair says which way apart."""
    r = torch.arange(CONTEXT_SIDE).float()
    f0, f1 = 0.06, 0.4
    return stripes(2 * math.pi * (f0 * r + (f1 - f0) * r**2 / (2 * CONTEXT_SIDE)), b, g)


def train_and_score(make: Maker, steps: int = 80, method: Callable[[int], SSLMethod] | None = None) -> float:
    """Accuracy of a fresh model (default: Rotation) on 256 held-out windows after ``steps`` steps of batch 16, the
    ``accuracy`` its own ``training_loss`` logs."""
    torch.manual_seed(0)
    method = (method or (lambda n: Rotation(ENC, {"head_hidden_dim": 64}, max_steps=n)))(steps)
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


def jigsaw(steps: int) -> Jigsaw:
    """The default puzzle: 3x3 grid, 100 permutations (chance 0.01)."""
    enc = EncoderConfig(in_chans=2, img_size=(JIGSAW_SIDE,) * 2, patch_size=(4, 4), embed_dim=32, depth=2,
                        num_heads=2)
    return Jigsaw(enc, {"head_hidden_dim": 64}, max_steps=steps)


def context(steps: int) -> Context:
    """The default geometry for a 40 px window (8-way, chance 0.125)."""
    enc = EncoderConfig(in_chans=2, img_size=(CONTEXT_SIDE,) * 2, patch_size=(4, 4), embed_dim=32, depth=2,
                        num_heads=2)
    return Context(enc, {"head_hidden_dim": 64}, max_steps=steps)


def test_rotation_head_learns_the_task_on_windows_with_an_up() -> None:
    assert train_and_score(lit_from_one_side) >= 0.95


def test_rotation_head_stays_near_chance_on_rotation_invariant_noise() -> None:
    assert train_and_score(isotropic_noise) < 0.35


def test_jigsaw_head_learns_the_default_100_permutations_on_cells_with_their_own_texture() -> None:
    assert train_and_score(textured_cells, 200, jigsaw) >= 0.95


def test_jigsaw_head_stays_near_chance_on_noise_whose_tiles_carry_no_order() -> None:
    assert train_and_score(functools.partial(isotropic_noise, side=JIGSAW_SIDE), 200, jigsaw) < 0.05  # chance 0.01


def test_context_head_learns_the_neighbour_direction_on_position_coded_stripes() -> None:
    assert train_and_score(chirped, 400, context) >= 0.95


def test_context_head_stays_near_chance_on_noise_whose_patches_carry_no_position() -> None:
    assert train_and_score(functools.partial(isotropic_noise, side=CONTEXT_SIDE), 400, context) < 0.225  # chance 0.125
