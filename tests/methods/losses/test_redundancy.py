"""Barlow Twins and VICReg against lightly's ``BarlowTwinsLoss`` and ``VICRegLoss``."""

from __future__ import annotations

import pytest
import torch
import lightly.loss as lightly_loss  # a [dev] extra: never skipped (conftest stops a run without it)

from geomed_ssl.methods.losses.redundancy import (
    barlow_twins_loss,
    barlow_twins_terms,
    off_diagonal,
    vicreg_loss,
    vicreg_terms,
)


def _views(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(b, d, generator=g) * 2 + 1
    return z_a, z_a + 0.5 * torch.randn(b, d, generator=g)  # correlated views, as after training a little


@pytest.mark.parametrize("lambda_offdiag", [5e-3, 0.1])
@pytest.mark.parametrize("batch", [2, 9, 64])
@pytest.mark.parametrize("dim", [3, 256])
def test_barlow_twins_matches_lightly(lambda_offdiag: float, batch: int, dim: int) -> None:
    z_a, z_b = _views(batch, dim, seed=batch + dim)
    got = barlow_twins_loss(z_a, z_b, lambda_offdiag)
    want = lightly_loss.BarlowTwinsLoss(lambda_param=lambda_offdiag)(z_a, z_b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_barlow_twins_gradients_match_lightly() -> None:
    a, b = (t.requires_grad_() for t in _views(12, 16, seed=0))
    a2, b2 = (t.detach().clone().requires_grad_() for t in (a, b))
    barlow_twins_loss(a, b, 5e-3).backward()
    lightly_loss.BarlowTwinsLoss(lambda_param=5e-3)(a2, b2).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-4, atol=1e-6)


def test_barlow_twins_of_identical_decorrelated_views_is_zero() -> None:
    a = torch.randn(64, 8)
    z = torch.linalg.qr(a - a.mean(0))[0] * 8  # orthogonal zero-mean columns: C is the identity
    t = barlow_twins_terms(z, z)
    assert float(t.invariance) < 1e-6 and float(t.redundancy) < 1e-6


@pytest.mark.parametrize(("inv", "var", "cov"), [(25.0, 25.0, 1.0), (1.0, 10.0, 0.5)])
@pytest.mark.parametrize("batch", [2, 9, 64])
@pytest.mark.parametrize("dim", [3, 256])
def test_vicreg_matches_lightly(inv: float, var: float, cov: float, batch: int, dim: int) -> None:
    z_a, z_b = _views(batch, dim, seed=batch * dim)
    z_a = z_a * 0.3  # some dimensions below the unit std, so the variance hinge is active
    got = vicreg_loss(z_a, z_b, inv, var, cov)
    want = lightly_loss.VICRegLoss(lambda_param=inv, mu_param=var, nu_param=cov)(z_a, z_b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_vicreg_gradients_match_lightly() -> None:
    a, b = (t.requires_grad_() for t in _views(10, 24, seed=1))
    a2, b2 = (t.detach().clone().requires_grad_() for t in (a, b))
    vicreg_loss(a * 0.3, b).backward()
    lightly_loss.VICRegLoss()(a2 * 0.3, b2).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-4, atol=1e-6)


def test_vicreg_default_weights_are_the_papers() -> None:
    z_a, z_b = _views(16, 8, seed=2)
    t = vicreg_terms(z_a, z_b)
    torch.testing.assert_close(vicreg_loss(z_a, z_b), 25 * t.invariance + 25 * t.variance + t.covariance)


@pytest.mark.parametrize("loss_fn", [barlow_twins_loss, vicreg_loss])
def test_batch_of_one_is_refused(loss_fn) -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        loss_fn(torch.randn(1, 4), torch.randn(1, 4))


def test_off_diagonal_lists_every_entry_but_the_diagonal() -> None:
    m = torch.arange(9.0).reshape(3, 3)
    assert off_diagonal(m).tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
