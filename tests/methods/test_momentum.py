"""The EMA helper: lerp of parameters, copy of buffers, schedules, and pair checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomed_ssl.methods.momentum import check_momentum_pairs, ema_update_, momentum_at, momentum_copy
from geomed_ssl.methods.schedules import teacher_momentum


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_momentum_copy_has_equal_weights_and_no_gradients() -> None:
    online = _net()
    target = momentum_copy(online)
    for po, pt in zip(online.parameters(), target.parameters()):
        assert torch.equal(po, pt) and pt is not po and not pt.requires_grad
    assert all(p.requires_grad for p in online.parameters())


def test_ema_update_moves_each_target_parameter_towards_online() -> None:
    online, other = _net(), _net()
    target = momentum_copy(other)
    before = [p.clone() for p in target.parameters()]
    ema_update_([(online, target)], momentum=0.9)
    for po, pt, p0 in zip(online.parameters(), target.parameters(), before):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * po)


def test_ema_update_copies_buffers() -> None:
    online = _net()
    target = momentum_copy(online)
    online.train()(torch.randn(16, 4))  # updates the BatchNorm running statistics
    ema_update_([(online, target)], momentum=0.99)
    for bo, bt in zip(online.buffers(), target.buffers()):
        assert torch.equal(bo, bt)


def test_ema_update_handles_several_pairs_and_dtypes() -> None:
    enc, head = _net(), nn.Linear(2, 3)
    enc_t, head_t = momentum_copy(_net()), momentum_copy(nn.Linear(2, 3)).to(torch.float64)
    want = [0.5 * pt.double() + 0.5 * po.double() for po, pt in zip(head.parameters(), head_t.parameters())]
    ema_update_([(enc, enc_t), (head, head_t)], momentum=0.5)
    for w, pt in zip(want, head_t.parameters()):
        assert pt.dtype == torch.float64
        torch.testing.assert_close(pt, w)


def test_momentum_one_keeps_the_target() -> None:
    online, target = _net(), momentum_copy(_net())
    before = [p.clone() for p in target.parameters()]
    ema_update_([(online, target)], momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_cosine_schedule_is_teacher_momentum_and_constant_when_final_is_base() -> None:
    assert momentum_at(0, 0.99, 100) == pytest.approx(0.99)
    assert momentum_at(100, 0.99, 100) == 1.0
    assert momentum_at(37, 0.996, 100) == teacher_momentum(37, 0.996, 100)
    assert {momentum_at(s, 0.999, 100, final=0.999) for s in (0, 50, 100)} == {0.999}


def test_mismatched_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="parameters differ"):
        check_momentum_pairs([(_net(), nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)))])
    check_momentum_pairs([(_net(), momentum_copy(_net()))])  # matching pair: no error


@pytest.mark.parametrize(("name", "target"), [("moco_v3", "momentum_encoder"), ("byol", "target_encoder"),
                                               ("moco_v2", "key_encoder")])
def test_momentum_targets_have_no_stochastic_depth(name: str, target: str) -> None:
    """The online encoder keeps ``model.drop_path``; its EMA target is deterministic given its weights."""
    from geomed_ssl.methods import METHODS
    from geomed_ssl.models.encoder import EncoderConfig

    torch.manual_seed(0)
    enc = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=2, num_heads=2,
                        drop_path=0.5)
    method = METHODS[name](enc, {"proj_hidden_dim": 16, "proj_dim": 8}, max_steps=10).train()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(getattr(method, target)(x), getattr(method, target)(x))
        assert not torch.equal(method.encoder(x), method.encoder(x))
