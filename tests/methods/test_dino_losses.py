"""Our DINO / iBOT / KoLeo losses and Sinkhorn-Knopp against lightly's reference implementations."""

from __future__ import annotations

import math

import lightly.loss as lightly_loss  # a [dev] requirement: a missing one fails the run, never skips it
import pytest
import torch

from geomed_ssl.methods.dino_losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, sinkhorn_knopp
from geomed_ssl.methods.heads import DINOHead


@pytest.mark.parametrize("teacher_temp", [0.04, 0.07, 0.2])
@pytest.mark.parametrize("n_local", [0, 2, 6])
@pytest.mark.parametrize("out_dim", [16, 256])
def test_dino_loss_and_center_update_match_lightly(teacher_temp: float, n_local: int, out_dim: int) -> None:
    g = torch.Generator().manual_seed(out_dim + n_local)
    b = 5
    teacher = [torch.randn(b, out_dim, generator=g) for _ in range(2)]
    student = [torch.randn(b, out_dim, generator=g) for _ in range(2 + n_local)]
    center = torch.randn(1, out_dim, generator=g)
    ours = DINOLoss(out_dim, student_temp=0.1, center_momentum=0.9)
    ref = lightly_loss.DINOLoss(output_dim=out_dim, student_temp=0.1, center_momentum=0.9)
    ours.center.copy_(center)
    ref.center.copy_(center[None])
    got = ours(student, teacher, teacher_temp=teacher_temp)
    want = ref(teacher, student, teacher_temp=teacher_temp)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.center, ref.center[0], rtol=1e-6, atol=1e-6)


def test_dino_loss_gradient_matches_lightly() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(4, 32, generator=g) for _ in range(2)]
    s1 = [torch.randn(4, 32, generator=g).requires_grad_() for _ in range(4)]
    s2 = [x.detach().clone().requires_grad_() for x in s1]
    DINOLoss(32)(s1, teacher, 0.04).backward()
    lightly_loss.DINOLoss(output_dim=32)(teacher, s2, teacher_temp=0.04).backward()
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_center_is_ema_of_teacher_mean() -> None:
    loss = DINOLoss(8, center_momentum=0.9)
    t = torch.randn(2, 6, 8)
    loss.update_center(t)
    torch.testing.assert_close(loss.center, 0.1 * t.reshape(-1, 8).mean(0, keepdim=True))
    loss.update_center(t)
    torch.testing.assert_close(loss.center, (0.09 + 0.1) * t.reshape(-1, 8).mean(0, keepdim=True))


@pytest.mark.parametrize("grid", [(4, 4), (3, 4, 4)])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
def test_ibot_patch_loss_matches_lightly_on_2d_and_3d_grids(grid: tuple[int, ...], teacher_temp: float) -> None:
    g = torch.Generator().manual_seed(len(grid))
    b, k = 3, 64
    mask = torch.rand(b, *grid, generator=g) < 0.4
    mask[1] = False  # an image without masked tokens counts as zero
    m = int(mask.sum())
    teacher, student = torch.randn(m, k, generator=g), torch.randn(m, k, generator=g)
    center = torch.randn(1, k, generator=g)
    ours = IBOTPatchLoss(k)
    ref = lightly_loss.IBOTPatchLoss(output_dim=k)
    ours.center.copy_(center)
    ref.center.center.copy_(center)
    got = ours(student, teacher, mask, teacher_temp=teacher_temp)
    want = ref(teacher, student, mask.reshape(b, -1, grid[-1]), teacher_temp=teacher_temp)  # lightly wants (B, H, W)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.center, ref.center.center, rtol=1e-6, atol=1e-6)


def test_ibot_loss_without_masked_tokens_is_zero_and_keeps_center() -> None:
    loss = IBOTPatchLoss(8)
    loss.center.fill_(0.5)
    out = loss(torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(2, 3, 3, dtype=torch.bool), 0.04)
    assert float(out) == 0.0
    assert torch.all(loss.center == 0.5)


def test_koleo_matches_lightly() -> None:
    x = torch.randn(16, 24, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(KoLeoLoss()(x), lightly_loss.KoLeoLoss()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temp", [0.05, 0.1])
def test_sinkhorn_matches_lightly_swav_and_balances_prototypes(temp: float) -> None:
    from lightly.loss.swav_loss import sinkhorn

    logits = torch.randn(32, 16, generator=torch.Generator().manual_seed(4))
    q = sinkhorn_knopp(logits, temp, n_iters=3)
    torch.testing.assert_close(q, sinkhorn(logits.clone(), iterations=3, epsilon=temp), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(1), torch.ones(32))
    many = sinkhorn_knopp(logits, temp, n_iters=500)  # converges to equal prototype mass M / K
    torch.testing.assert_close(many.sum(0), torch.full((16,), 2.0), rtol=1e-2, atol=1e-2)


def test_sinkhorn_is_finite_for_huge_logits() -> None:
    q = sinkhorn_knopp(torch.tensor([[1000.0, 0.0], [0.0, 1000.0]]), 0.04)
    assert torch.isfinite(q).all()


def test_sinkhorn_centering_gives_dino_loss_balanced_targets() -> None:
    loss = DINOLoss(8, centering="sinkhorn")
    probs = loss.teacher_probs(torch.randn(2, 4, 8), 0.07)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4))
    out = loss([torch.randn(4, 8) for _ in range(3)], [torch.randn(4, 8) for _ in range(2)], 0.07)
    assert torch.isfinite(out) and torch.all(loss.center == 0)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # lightly's head uses the old weight_norm
def test_head_matches_lightly_dino_projection_head_with_same_weights() -> None:
    from lightly.models.modules import DINOProjectionHead

    torch.manual_seed(0)
    ref = DINOProjectionHead(input_dim=24, hidden_dim=32, bottleneck_dim=8, output_dim=40)
    ours = DINOHead(24, 40, hidden_dim=32, bottleneck_dim=8)
    linears = [m for m in ref.layers if isinstance(m, torch.nn.Linear)]
    ours_linears = [m for m in ours.mlp if isinstance(m, torch.nn.Linear)]
    for a, b in zip(ours_linears, linears, strict=True):
        with torch.no_grad():
            b.bias.add_(0.1 * torch.randn_like(b.bias))  # nonzero, as after training: a dropped bias shows
        a.load_state_dict(b.state_dict())
    ours.last_layer_parameters()[1].data.copy_(ref.last_layer.weight_v.data)
    x = torch.randn(5, 24)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_head_prototypes_have_unit_norm_and_fixed_gain() -> None:
    head = DINOHead(16, 32, hidden_dim=16, bottleneck_dim=8)
    w = head.last_layer_weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(32))
    g, v = head.last_layer_parameters()
    assert g.shape == (32, 1) and torch.all(g == 1) and not g.requires_grad and v.requires_grad
    assert head(torch.randn(3, 16)).abs().max() <= 1.0 + 1e-5  # unit vectors times unit prototypes
    assert math.isclose(float(head.mlp[0].weight.detach().std()), 0.02, rel_tol=0.3)


def _ddp_center_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        loss = DINOLoss(4, center_momentum=0.5)
        loss.update_center(torch.full((2, 3, 4), float(rank + 1)) * torch.arange(1, 5.0))  # rank 0: 1x, rank 1: 2x
        q = sinkhorn_knopp(torch.randn(3, 4, generator=torch.Generator().manual_seed(rank)), 0.1)
        torch.save({"center": loss.center, "q": q}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_center_and_sinkhorn_are_reduced_over_ranks(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_center_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    out = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    for rank in range(2):  # the mean over both ranks' samples
        torch.testing.assert_close(out[rank]["center"], 0.5 * 1.5 * torch.arange(1, 5.0)[None])
    logits = torch.cat([torch.randn(3, 4, generator=torch.Generator().manual_seed(r)) for r in range(2)])
    torch.testing.assert_close(torch.cat([o["q"] for o in out]), sinkhorn_knopp(logits, 0.1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_dino_loss_computes_in_float32_under_bf16_autocast(centering: str) -> None:
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(16, 512, generator=g) * 3 for _ in range(4)]
    teacher = [torch.randn(16, 512, generator=g) * 3 for _ in range(2)]
    reference = DINOLoss(512, centering=centering)(student, teacher, 0.04, update_center=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = DINOLoss(512, centering=centering)(student, teacher, 0.04, update_center=False)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-6, atol=1e-6)  # a bf16 einsum is off by ~1e-3 relative
