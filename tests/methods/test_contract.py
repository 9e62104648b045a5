"""The method contract: every hook the trainer calls is declared on SSLMethod with a default; momentum targets are
declared as pairs and moved by the one EMA helper; a target that would be trained is refused."""

from __future__ import annotations

import copy

import torch
from torch import nn

import pytest

from geomed_ssl.methods import MAE, SSLMethod
from geomed_ssl.methods.base import MethodOutput
from geomed_ssl.methods.momentum import momentum_copy
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

ENC = EncoderConfig(in_chans=2, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
TRAINER_HOOKS = ("fit_to_data", "training_loss", "before_optimizer_step", "weight_decay", "momentum_pairs", "momentum", "after_step",
                 "export_encoder", "no_weight_decay", "reconstruct")


class Teacher(SSLMethod):
    name = "teacher_contract_test"

    def __init__(self, target: nn.Module | None = None) -> None:
        super().__init__(ENC, None, max_steps=10)
        self.encoder = ViTEncoder(ENC)
        self.target = target if target is not None else momentum_copy(self.encoder)

    def momentum_pairs(self):
        return [(self.encoder, self.target)]

    def momentum(self, step: int) -> float:
        return 0.75

    def training_loss(self, batch, step, generator) -> MethodOutput:
        return MethodOutput(self.encoder(batch["image"]).mean())


@pytest.mark.parametrize("hook", TRAINER_HOOKS)
def test_every_trainer_hook_is_declared_with_a_docstring(hook: str) -> None:
    assert callable(getattr(SSLMethod, hook)) and getattr(SSLMethod, hook).__doc__


def test_default_after_step_moves_declared_targets_by_ema() -> None:
    m = Teacher()
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in m.target.named_parameters()}
    m.after_step(3)
    online = dict(m.encoder.named_parameters())
    for n, p in m.target.named_parameters():
        torch.testing.assert_close(p, 0.75 * before[n] + 0.25 * online[n])


def test_target_that_would_be_trained_is_refused() -> None:
    m = Teacher()
    m.check_contract()
    with pytest.raises(TypeError, match="momentum targets must not require grad"):
        Teacher(copy.deepcopy(ViTEncoder(ENC))).check_contract()


def test_defaults_keep_train_weight_decay_and_touch_nothing() -> None:
    m = Teacher()
    assert m.weight_decay(5) is None and m.before_optimizer_step(5) is None
    assert not Teacher.reconstructs() and MAE.reconstructs()
    with pytest.raises(NotImplementedError):
        SSLMethod(ENC).training_loss({}, 0, torch.Generator())
