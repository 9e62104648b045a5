"""BYOL / SimSiam negative cosine similarity against lightly's ``NegativeCosineSimilarity``."""

from __future__ import annotations

import pytest
import torch
import lightly.loss as lightly_loss  # a [dev] extra: never skipped (conftest stops a run without it)

from geomed_ssl.methods.losses.siamese import negative_cosine_similarity, symmetric_negative_cosine


@pytest.mark.parametrize("batch", [1, 5, 32])
@pytest.mark.parametrize("dim", [2, 64, 2048])
def test_negative_cosine_similarity_value_and_gradient_match_lightly(batch: int, dim: int) -> None:
    g = torch.Generator().manual_seed(batch * dim)
    p, z = torch.randn(batch, dim, generator=g).requires_grad_(), torch.randn(batch, dim, generator=g)
    p_ref = p.detach().clone().requires_grad_()
    got = negative_cosine_similarity(p, z)
    want = lightly_loss.NegativeCosineSimilarity()(p_ref, z)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.backward()
    want.backward()
    torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-8)


def test_target_gets_no_gradient_unless_asked() -> None:
    p, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    negative_cosine_similarity(p, z).backward()
    assert z.grad is None
    negative_cosine_similarity(p, z, stop_gradient=False).backward()
    assert z.grad is not None


def test_symmetric_loss_pairs_each_prediction_with_the_other_views_target() -> None:
    p1, p2, z1, z2 = (torch.randn(3, 8) for _ in range(4))
    ref = lightly_loss.NegativeCosineSimilarity()
    torch.testing.assert_close(symmetric_negative_cosine(p1, p2, z1, z2), 0.5 * (ref(p1, z2) + ref(p2, z1)))


def test_prediction_equal_to_target_gives_minus_one() -> None:
    z = torch.randn(6, 16)
    torch.testing.assert_close(negative_cosine_similarity(3 * z, z), torch.tensor(-1.0))
