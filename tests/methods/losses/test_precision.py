"""Every loss computes in float32 with autocast off: bf16 autocast and bf16 / fp16 inputs give the float32 result."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.methods.losses import (
    barlow_twins_loss,
    deepcluster_loss,
    info_nce_loss,
    moco_v3_loss,
    msn_terms,
    negative_cosine_similarity,
    nt_xent_loss,
    sinkhorn_knopp,
    swav_loss,
    vicreg_loss,
)

NEGATIVES = F.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(1)), dim=1)

# each entry: a loss of a list of (B, D) = (8, 16) embeddings
LOSSES: dict[str, tuple[int, Callable[[list[torch.Tensor]], torch.Tensor]]] = {
    "nt_xent": (2, lambda z: nt_xent_loss(z[0], z[1], 0.1)),
    "info_nce": (2, lambda z: info_nce_loss(z[0], z[1], NEGATIVES, 0.2)),
    "moco_v3": (4, lambda z: moco_v3_loss(*z, temperature=0.2)),
    "negative_cosine": (2, lambda z: negative_cosine_similarity(z[0], z[1])),
    "barlow_twins": (2, lambda z: barlow_twins_loss(z[0], z[1])),
    "vicreg": (2, lambda z: vicreg_loss(z[0], z[1])),
    "swav": (3, lambda z: swav_loss([z[0] / 16, z[1] / 16], [z[2] / 16], temperature=0.1)),
    "deepcluster": (2, lambda z: deepcluster_loss([torch.stack(z)], torch.arange(8)[None] % 16, 0.1)),
    "msn": (4, lambda z: sum(msn_terms(torch.cat(z[:2]), z[2], z[3])[:2])),  # z[3]: 8 prototypes
}


def _embeddings(n: int, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return [torch.randn(8, 16, generator=g) * scale for _ in range(n)]


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_autocast_leaves_the_float32_result(name: str) -> None:
    n, fn = LOSSES[name]
    z = _embeddings(n)
    want = fn(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(z)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_low_precision_inputs_are_computed_in_float32(name: str, dtype: torch.dtype) -> None:
    n, fn = LOSSES[name]
    z = [t.to(dtype).requires_grad_() for t in _embeddings(n)]
    got = fn(z)
    assert got.dtype == torch.float32
    assert torch.equal(got, fn([t.detach().float() for t in z]))
    got.backward()
    assert all(t.grad is None or (t.grad.dtype == dtype and torch.isfinite(t.grad).all()) for t in z)


@pytest.mark.parametrize("name", ["nt_xent", "info_nce", "moco_v3", "negative_cosine"])
def test_fp16_embeddings_whose_squared_norm_overflows_fp16_stay_finite(name: str) -> None:
    n, fn = LOSSES[name]
    z = _embeddings(n, scale=300.0)  # |z|^2 ~ 1e6 > 65504: an fp16 normalisation would divide by inf
    got = fn([t.half() for t in z])
    assert torch.isfinite(got)
    torch.testing.assert_close(got, fn([t.half().float() for t in z]))


def test_sinkhorn_of_fp16_scores_equals_float32() -> None:
    scores = torch.rand(16, 10) * 2 - 1
    torch.testing.assert_close(sinkhorn_knopp(scores.half(), 0.05), sinkhorn_knopp(scores.half().float(), 0.05))
