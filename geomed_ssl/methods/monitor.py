"""Collapse monitor for siamese, contrastive and clustering methods: the spread of the embeddings over the batch.

A collapsed encoder maps every image to the same point; the loss of a non-contrastive method (BYOL, SimSiam) can
still look fine then. The monitor logs ``embedding_std``, the standard deviation over the (global) batch of the
L2-normalised embeddings, averaged over dimensions (about ``1 / sqrt(D)`` for embeddings spread over the sphere, 0
when collapsed; SimSiam's diagnostic), and ``collapse`` (1 when ``embedding_std * sqrt(D)`` falls below
:data:`COLLAPSE_TOL`), which the progress bar shows; a collapse also warns in the log, at most every
:data:`COLLAPSE_WARN_EVERY` steps, naming what to change.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from geomed_ssl.methods.distributed import all_reduce_sum_, rank

log = logging.getLogger("geomed_ssl")

COLLAPSE_TOL = 0.02  # embedding_std * sqrt(D) below this: the batch's embeddings are (nearly) one point
COLLAPSE_WARN_EVERY = 100  # steps between two warnings


@torch.no_grad()
def batch_std(z: Tensor) -> Tensor:
    """Per-dimension standard deviation (sample, as ``Tensor.std``) of z (B, D) over the global batch: every
    rank's rows (sums over ranks, so a 2-process run logs what one process on both halves logs; 0 for one row)."""
    z = z.float()  # float32 throughout (MPS has no float64): the mean first, then the squared deviations
    d = z.shape[1]
    sums = all_reduce_sum_(torch.cat([z.sum(0), z.new_tensor([z.shape[0]])]))
    n = sums[-1]
    if n < 2:
        return z.new_zeros(d)
    squares = all_reduce_sum_(((z - sums[:d] / n) ** 2).sum(0))
    return (squares / (n - 1)).sqrt()


class CollapseMonitor:
    """``monitor(z (B, D), step) -> {"embedding_std", "collapse"}`` (detached scalars); warns on rank 0 when the
    embeddings collapse. ``advice``: what to change, for the warning."""

    def __init__(self, method: str, advice: str = "lower train.base_lr, strengthen the augmentations (augment:) or "
                 "raise train.batch_size", tol: float = COLLAPSE_TOL, every: int = COLLAPSE_WARN_EVERY) -> None:
        self.method, self.advice, self.tol, self.every = method, advice, tol, every
        self.last_warning = -every

    @torch.no_grad()
    def __call__(self, z: Tensor, step: int) -> dict[str, Tensor]:
        zf = F.normalize(z.detach().float().flatten(1), dim=-1)  # (B, D)
        d = zf.shape[-1]
        std = batch_std(zf).mean()  # the global batch's, the same on every rank
        collapsed = bool(std * math.sqrt(d) < self.tol)
        if collapsed and step - self.last_warning >= self.every:
            self.last_warning = step
            if rank() == 0:
                log.warning(f"warning: {self.method} collapse at step {step}: every window gets nearly the same "
                            f"embedding (embedding_std={float(std):.2e}, healthy ~{1 / math.sqrt(d):.2e}); "
                            f"{self.advice}.")
        return {"embedding_std": std, "collapse": torch.tensor(float(collapsed))}
