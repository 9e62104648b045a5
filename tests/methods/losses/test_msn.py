"""MSN's loss against lightly's ``MSNLoss`` (which follows the official code): value and gradients, with and without
Sinkhorn, one or several anchor views."""

from __future__ import annotations

import pytest
import torch
from lightly.loss.msn_loss import MSNLoss  # a [dev] extra: never skipped

from geomed_ssl.methods.losses.msn import msn_terms


def _inputs(views: int, b: int, k: int, d: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(views * b, d, generator=g).requires_grad_(), torch.randn(b, d, generator=g),
            torch.randn(k, d, generator=g).requires_grad_()]


@pytest.mark.parametrize("iterations", [0, 3])
@pytest.mark.parametrize(("views", "b", "k"), [(1, 8, 10), (3, 4, 32), (5, 16, 7)])
@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_loss_and_gradients_match_lightly(iterations: int, views: int, b: int, k: int, weight: float) -> None:
    anchors, target, protos = _inputs(views, b, k, seed=views + k)
    terms = msn_terms(anchors, target, protos, temperature=0.1, sharpen=0.25, sinkhorn_iterations=iterations)
    got = terms.cross_entropy + weight * terms.memax
    got.backward()
    got_grads = anchors.grad.clone(), protos.grad.clone()
    anchors.grad = protos.grad = None

    reference = MSNLoss(temperature=0.1, sinkhorn_iterations=iterations, regularization_weight=weight)
    want = reference(anchors, target, protos, target_sharpen_temperature=0.25)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grads[0], anchors.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got_grads[1], protos.grad, rtol=1e-4, atol=1e-7)


def test_targets_are_balanced_assignments_and_memax_is_zero_for_a_uniform_mean() -> None:
    anchors, target, protos = _inputs(2, 64, 8)
    terms = msn_terms(anchors, target, protos, sinkhorn_iterations=50)
    torch.testing.assert_close(terms.targets.sum(dim=1), torch.ones(64))
    torch.testing.assert_close(terms.targets.sum(dim=0), torch.full((8,), 64 / 8), rtol=1e-2, atol=0)
    # identical anchors spread evenly over the prototypes' directions: their mean prediction is uniform
    eye = torch.eye(8)
    uniform = msn_terms(eye, eye, eye, sinkhorn_iterations=0)
    assert float(uniform.memax) == pytest.approx(0.0, abs=1e-6)
    collapsed = msn_terms(eye[:1].repeat(8, 1), eye, eye, sinkhorn_iterations=0)
    assert float(collapsed.memax) > 1.0  # every anchor on one prototype: log K - H(mean) is large
