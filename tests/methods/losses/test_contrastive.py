"""NT-Xent, MoCo v2's queued InfoNCE and MoCo v3's loss against lightly and the MoCo v3 paper's pseudocode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import lightly.loss as lightly_loss  # a [dev] extra: never skipped (conftest stops a run without it)

from geomed_ssl.methods.losses.contrastive import (
    QueueInfoNCELoss,
    info_nce_loss,
    moco_v3_contrastive,
    moco_v3_loss,
    nt_xent_loss,
)


def _pair(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("batch", [2, 7, 32])
@pytest.mark.parametrize("dim", [3, 128])
def test_nt_xent_matches_lightly(temperature: float, batch: int, dim: int) -> None:
    z0, z1 = _pair(batch, dim, seed=batch * dim)
    got = nt_xent_loss(z0, z1, temperature)
    want = lightly_loss.NTXentLoss(temperature=temperature)(z0, z1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_gradients_match_lightly(temperature: float) -> None:
    a0, a1 = (t.requires_grad_() for t in _pair(6, 12, seed=3))
    b0, b1 = (t.detach().clone().requires_grad_() for t in (a0, a1))
    nt_xent_loss(a0, a1, temperature).backward()
    lightly_loss.NTXentLoss(temperature=temperature)(b0, b1).backward()
    torch.testing.assert_close(a0.grad, b0.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-5, atol=1e-7)


def test_nt_xent_is_symmetric_in_the_two_views() -> None:
    z0, z1 = _pair(5, 8, seed=1)
    torch.testing.assert_close(nt_xent_loss(z0, z1), nt_xent_loss(z1, z0))


def test_nt_xent_of_identical_views_far_apart_tends_to_zero() -> None:
    z = torch.eye(4) * 10  # orthogonal images, both views identical: the positive wins by far at a low temperature
    assert float(nt_xent_loss(z, z, temperature=0.01)) < 1e-6


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize(("batch", "queue_size"), [(4, 16), (8, 24), (16, 16)])
@pytest.mark.parametrize("dim", [8, 64])
def test_queued_info_nce_matches_lightly_memory_bank_over_steps(temperature: float, batch: int, queue_size: int,
                                                                 dim: int) -> None:
    """Four steps, so the queue wraps at least once (sizes are multiples of the batch: lightly's bank drops the
    rows past its end instead of wrapping them)."""
    ref = lightly_loss.NTXentLoss(temperature=temperature, memory_bank_size=(queue_size, dim))
    ours = QueueInfoNCELoss(queue_size, dim, temperature)
    ours.queue.rows.copy_(ref.memory_bank.bank)
    for step in range(4):
        q, k = _pair(batch, dim, seed=100 + step)
        got = ours(q.clone().requires_grad_(), k)
        want = ref(q.clone().requires_grad_(), k)  # lightly enqueues only when the query requires grad
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.queue.rows, ref.memory_bank.bank, rtol=1e-6, atol=1e-7)


def test_queued_info_nce_gradient_matches_lightly() -> None:
    ref = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    ours = QueueInfoNCELoss(32, 16, 0.2)
    ours.queue.rows.copy_(ref.memory_bank.bank)
    q, k = _pair(8, 16, seed=5)
    qa, qb = q.clone().requires_grad_(), q.clone().requires_grad_()
    ours(qa, k).backward()
    ref(qb, k).backward()
    torch.testing.assert_close(qa.grad, qb.grad, rtol=1e-5, atol=1e-7)


def test_queued_info_nce_without_update_leaves_the_queue() -> None:
    loss = QueueInfoNCELoss(16, 8)
    before = loss.queue.rows.clone()
    loss(*_pair(4, 8, seed=0), update=False)
    assert torch.equal(loss.queue.rows, before)
    assert int(loss.queue.ptr) == 0


def test_info_nce_key_is_a_stop_gradient_target() -> None:
    q, k = (t.requires_grad_() for t in _pair(4, 8, seed=2))
    info_nce_loss(q, k, F.normalize(torch.randn(10, 8), dim=1)).backward()
    assert q.grad is not None and k.grad is None


# ---- MoCo v3: Algorithm 1 of Chen, Xie & He (2021), written out -----------------------------------------------
def _ctr_pseudocode(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    # def ctr(q, k):
    #     logits = mm(q, k.t())  # [N, N] pairs
    #     labels = range(N)  # positives are in diagonal
    #     loss = CrossEntropyLoss(logits/tau, labels)
    #     return 2 * tau * loss
    # (q and k are the L2-normalised outputs; k comes from the momentum encoder, no gradient)
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1).detach()
    logits = torch.mm(q, k.t())
    labels = torch.arange(q.shape[0])
    return 2 * tau * torch.nn.CrossEntropyLoss()(logits / tau, labels)


@pytest.mark.parametrize("temperature", [0.1, 1.0])
@pytest.mark.parametrize("batch", [2, 9, 32])
@pytest.mark.parametrize("dim", [4, 256])
def test_moco_v3_loss_matches_published_pseudocode(temperature: float, batch: int, dim: int) -> None:
    g = torch.Generator().manual_seed(batch + dim)
    q1, q2, k1, k2 = (torch.randn(batch, dim, generator=g) for _ in range(4))
    # loss = ctr(q1, k2) + ctr(q2, k1)  # symmetrized
    want = _ctr_pseudocode(q1, k2, temperature) + _ctr_pseudocode(q2, k1, temperature)
    torch.testing.assert_close(moco_v3_loss(q1, q2, k1, k2, temperature), want, rtol=1e-5, atol=1e-6)


def test_moco_v3_gradient_reaches_queries_only_and_matches_pseudocode() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 16, generator=g).requires_grad_(), torch.randn(6, 16, generator=g).requires_grad_()
    q_ref = q.detach().clone().requires_grad_()
    moco_v3_contrastive(q, k, 0.2).backward()
    _ctr_pseudocode(q_ref, k.detach(), 0.2).backward()
    torch.testing.assert_close(q.grad, q_ref.grad, rtol=1e-5, atol=1e-7)
    assert k.grad is None


@pytest.mark.parametrize("loss_fn", [nt_xent_loss, moco_v3_contrastive])
def test_non_positive_temperature_is_refused(loss_fn) -> None:
    with pytest.raises(ValueError, match="temperature must be positive"):
        loss_fn(*_pair(4, 8, seed=0), 0.0)


def test_nt_xent_refuses_a_batch_without_negatives() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        nt_xent_loss(*_pair(1, 8, seed=0))
