"""SwAV's loss and Sinkhorn-Knopp against lightly's ``SwaVLoss`` and ``sinkhorn``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import lightly.loss.swav_loss as lightly_swav  # a [dev] extra: never skipped

from geomed_ssl.methods.dino_losses import sinkhorn_knopp as dino_sinkhorn
from geomed_ssl.methods.losses.sinkhorn import sinkhorn_knopp
from geomed_ssl.methods.losses.swav import swav_loss


def _scores(n_crops: int, b: int, k: int, d: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Cosine scores of L2-normalised embeddings against L2-normalised prototypes, one (B, K) per crop."""
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return [F.normalize(torch.randn(b, d, generator=g), dim=1) @ protos.t() for _ in range(n_crops)]


@pytest.mark.parametrize("epsilon", [0.03, 0.05, 0.1])
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize(("b", "k"), [(4, 10), (32, 8), (16, 300)])
def test_sinkhorn_matches_lightly(epsilon: float, iterations: int, b: int, k: int) -> None:
    (scores,) = _scores(1, b, k, seed=b + k)
    got = sinkhorn_knopp(scores, epsilon, iterations)
    want = lightly_swav.sinkhorn(scores, iterations=iterations, epsilon=epsilon)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_sinkhorn_rows_are_distributions_and_prototypes_balanced() -> None:
    (scores,) = _scores(1, 64, 8, seed=1)
    q = sinkhorn_knopp(scores, 0.05, iterations=50)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    torch.testing.assert_close(q.sum(0), torch.full((8,), 64 / 8), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("temp", [0.04, 0.07])
def test_sinkhorn_is_a_drop_in_for_dinos_centering(temp: float) -> None:
    (logits,) = _scores(1, 20, 64, seed=7)  # DINO's head ends in unit-norm prototypes: cosine logits
    torch.testing.assert_close(sinkhorn_knopp(logits, temp, 3), dino_sinkhorn(logits, temp, 3), rtol=1e-4, atol=1e-7)


def test_sinkhorn_survives_scores_whose_exp_overflows_float32() -> None:
    scores = 5 + 3 * torch.rand(8, 5)  # exp(scores / 0.05) > exp(100): inf in float32 without the shift
    assert not torch.isfinite(torch.exp(scores / 0.05)).all()
    want = lightly_swav.sinkhorn(scores.double(), epsilon=0.05).float()  # the unshifted formula, in float64
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05), want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("n_local", [0, 2, 6])
@pytest.mark.parametrize(("b", "k"), [(4, 16), (24, 100)])
def test_swav_loss_matches_lightly(temperature: float, n_local: int, b: int, k: int) -> None:
    crops = _scores(2 + n_local, b, k, seed=n_local + b)
    ref = lightly_swav.SwaVLoss(temperature=temperature, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    got = swav_loss(crops[:2], crops[2:], temperature=temperature)
    want = ref(crops[:2], crops[2:])
    torch.testing.assert_close(got, want.reshape(()), rtol=1e-5, atol=1e-6)


def test_swav_loss_with_queue_matches_lightly() -> None:
    crops = _scores(4, 8, 20, seed=3)
    queue = _scores(2, 32, 20, seed=4)  # one (Q, K) per global crop
    got = swav_loss(crops[:2], crops[2:], queue_scores=queue)
    want = lightly_swav.SwaVLoss()(crops[:2], crops[2:], queue_outputs=queue)
    torch.testing.assert_close(got, want.reshape(()), rtol=1e-5, atol=1e-6)


def test_swav_gradients_match_lightly_and_codes_get_none() -> None:
    crops = [c.requires_grad_() for c in _scores(5, 6, 12, seed=5)]
    ref_crops = [c.detach().clone().requires_grad_() for c in crops]
    swav_loss(crops[:2], crops[2:]).backward()
    lightly_swav.SwaVLoss()(ref_crops[:2], ref_crops[2:]).backward()
    for a, b in zip(crops, ref_crops):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_codes_come_from_global_crops_only() -> None:
    crops = _scores(4, 8, 10, seed=6)
    base = swav_loss(crops[:2], crops[2:])
    # a local crop's scores never enter Sinkhorn: changing one changes only its own prediction term
    changed = swav_loss(crops[:2], [crops[2], crops[3] + 1.0])  # +1 on every score: its softmax is unchanged
    torch.testing.assert_close(base, changed)


def test_swav_needs_two_global_crops() -> None:
    with pytest.raises(ValueError, match="at least 2 global crops"):
        swav_loss(_scores(1, 4, 8), _scores(2, 4, 8))
