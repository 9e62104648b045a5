"""DINO / iBOT / KoLeo losses and Sinkhorn-Knopp centering: pure modules, no encoder knowledge.

Shapes: ``V`` views, ``B`` images, ``K`` prototypes (head ``out_dim``), ``M`` masked patch tokens.
All losses compute in float32 with autocast off, whatever the dtype of their inputs (bf16/fp16 logits overflow in
softmax, and under autocast the cross-entropy einsum would otherwise run as a bf16 matmul).
The centers are EMA buffers updated from the teacher's raw logits after the loss is computed (official order) and
all-reduced over ranks when ``torch.distributed`` is initialised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.methods.distributed import all_reduce_sum_, gather, local_offset
from geomed_ssl.methods.losses.precision import float32_loss
from geomed_ssl.methods.losses.sinkhorn import sinkhorn_knopp as _sinkhorn

CENTERINGS = ("ema", "sinkhorn", "none")


def sinkhorn_knopp(logits: Tensor, temp: float, n_iters: int = 3) -> Tensor:
    """Teacher targets balanced over prototypes (DINOv2 / SwAV): ``(M, K)`` logits -> ``(M, K)`` probabilities,
    each row summing to 1, column masses equal as ``n_iters`` grows, samples counted over all ranks. The shared
    :func:`geomed_ssl.methods.losses.sinkhorn_knopp` with ``epsilon=temp``."""
    return _sinkhorn(logits, epsilon=temp, iterations=n_iters)


class _Centered(nn.Module):
    """Shared teacher-side logic: centering (EMA mean / Sinkhorn-Knopp / none), the EMA center buffer and the
    student temperature."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iters: int = 3) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.register_buffer("center", torch.zeros(1, out_dim))  # (1, K)

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Teacher targets ``(..., K)`` from raw logits ``(..., K)``; the center is not updated here."""
        t = teacher_logits.float()
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(t.reshape(-1, t.shape[-1]), teacher_temp, self.sinkhorn_iters).reshape(t.shape)
        if self.centering == "ema":
            t = t - self.center
        return F.softmax(t / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """``center <- m * center + (1 - m) * mean(teacher_logits)`` over every sample of every rank."""
        t = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])  # (N, K)
        total = all_reduce_sum_(t.sum(dim=0, keepdim=True))
        count = all_reduce_sum_(torch.tensor(float(t.shape[0]), device=t.device))
        m = self.center_momentum
        updated = self.center * m + total / count.clamp_min(1.0) * (1.0 - m)
        self.center.copy_(torch.where(count > 0, updated, self.center))  # no tokens anywhere: keep the center


class DINOLoss(_Centered):
    """Cross-entropy between centred, sharpened teacher softmax on global crops and student log-softmax on all
    crops, skipping pairs of the same view; student views are ordered globals first, as the teacher's."""

    @float32_loss
    def loss_from_probs(self, teacher_probs: Tensor, student_logits: list[Tensor] | Tensor) -> Tensor:
        """``teacher_probs`` (Vt, B, K) and Vs >= Vt student logits (B, K) each, or stacked (Vs, B, K) -> mean
        cross-entropy."""
        s = student_logits if torch.is_tensor(student_logits) else torch.stack(list(student_logits))
        s = s.float()  # (Vs, B, K)
        log_p = F.log_softmax(s / self.student_temp, dim=-1)
        ce = -torch.einsum("tbk,sbk->ts", teacher_probs, log_p)  # (Vt, Vs) summed over the batch
        n_t, n_s = ce.shape
        keep = ~torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)  # drop same-view pairs
        n_terms = n_t * n_s - min(n_t, n_s)
        if n_terms == 0:
            raise ValueError("DINOLoss needs at least two views in total: all pairs are same-view pairs.")
        return ce[keep].sum() / (n_terms * s.shape[1])

    def forward(
        self, student_logits: list[Tensor] | Tensor, teacher_logits: list[Tensor] | Tensor, teacher_temp: float,
        update_center: bool = True,
    ) -> Tensor:
        """Loss from raw logits; the center is updated afterwards (EMA centering only)."""
        t = teacher_logits if torch.is_tensor(teacher_logits) else torch.stack(list(teacher_logits))
        t = t.detach()  # (Vt, B, K)
        loss = self.loss_from_probs(self.teacher_probs(t, teacher_temp), student_logits)
        if update_center and self.centering == "ema":
            self.update_center(t)
        return loss


class IBOTPatchLoss(_Centered):
    """iBOT masked-patch loss (DINOv2 form): per masked token cross-entropy between the teacher's prediction of the
    unmasked token and the student's of the masked one, averaged per image over its masked tokens, then over all
    images (images without masked tokens count as zero). Works for any token grid: ``mask`` is (B, *grid)."""

    @float32_loss
    def loss_from_probs(self, teacher_probs: Tensor, student_logits: Tensor, mask: Tensor) -> Tensor:
        """``teacher_probs`` / ``student_logits`` (M, K) for the True entries of ``mask`` (B, *grid) in order."""
        flat = mask.reshape(mask.shape[0], -1)  # (B, N)
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        ce = -(teacher_probs * log_p).sum(dim=-1)  # (M,)
        weight = (1.0 / flat.sum(dim=1, keepdim=True).clamp_min(1)).expand_as(flat)[flat]  # (M,)
        return (ce * weight).sum() / flat.shape[0]

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, teacher_temp: float,
        update_center: bool = True,
    ) -> Tensor:
        t = teacher_logits.detach()
        loss = self.loss_from_probs(self.teacher_probs(t, teacher_temp), student_logits, mask)
        if update_center and self.centering == "ema":
            self.update_center(t)
        return loss


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser (DINOv2): ``-mean(log(d_nn + eps))`` over L2-normalised rows.

    Under DDP each rank's rows look for their nearest neighbour among the rows of every rank (gathered with
    gradients, :func:`~geomed_ssl.methods.distributed.gather`), so the mean of the per-rank losses is the loss of the
    global batch and N processes of batch B train as one of batch N*B (DINOv2 searches each GPU's batch alone)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    @float32_loss
    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, D), with >= 2 rows in the global batch -> scalar."""
        x = F.normalize(x.float(), dim=-1, eps=self.eps)
        rows = gather(x)  # (N, D), this rank's rows from local_offset(B)
        own = local_offset(len(x)) + torch.arange(len(x), device=x.device)
        sim = x.detach() @ rows.detach().t()  # (B, N), only to find the neighbours
        sim[torch.arange(len(x), device=x.device), own] = -2.0  # never its own neighbour
        nn_idx = sim.argmax(dim=1)
        dist_nn = torch.linalg.vector_norm(x - rows[nn_idx] + self.eps, dim=-1)  # as torch.pairwise_distance
        return -torch.log(dist_nn + self.eps).mean()
