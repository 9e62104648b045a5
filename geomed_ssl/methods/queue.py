"""A FIFO queue of feature rows kept in buffers, so a checkpoint holds it and a resumed run continues exactly.

MoCo's negative keys, SwAV's queue of past embeddings and DeepCluster-v2's memory bank of (index, embedding) are all
this queue. Under DDP, :meth:`FeatureQueue.enqueue` gathers the rows of every rank first (``gather=True``), so every
rank holds the same queue.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.methods.distributed import concat_all_gather

QUEUE_INITS = ("random", "empty")


class FeatureQueue(nn.Module):
    """``size`` rows of shape ``row_shape`` in a ring buffer; the oldest rows are overwritten first.

    ``init="random"`` starts full of L2-normalised Gaussian rows (MoCo: negatives from the first step on);
    ``init="empty"`` starts with no valid row and :meth:`contents` grows until the queue is full.

    Buffers (all in ``state_dict``): ``rows`` (size, *row_shape), ``ptr`` () the next row to write, ``filled`` ()
    the number of valid rows.
    """

    def __init__(self, size: int, row_shape: int | Sequence[int] = (), dtype: torch.dtype = torch.float32,
                 init: str = "random", generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        if init not in QUEUE_INITS:
            raise ValueError(f"queue init must be one of {QUEUE_INITS}, got {init!r}")
        shape = (row_shape,) if isinstance(row_shape, int) else tuple(row_shape)
        self.size = int(size)
        self.row_shape = shape
        if init == "random":
            if not dtype.is_floating_point or not shape:
                raise ValueError("init='random' needs a floating dtype and at least one feature dimension")
            rows = F.normalize(torch.randn((self.size, *shape), generator=generator), dim=-1).to(dtype)
            filled = self.size
        else:
            rows, filled = torch.zeros((self.size, *shape), dtype=dtype), 0
        self.register_buffer("rows", rows)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(filled, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    @property
    def is_full(self) -> bool:
        return int(self.filled) == self.size

    def contents(self) -> Tensor:
        """A copy of the valid rows in storage order: (n, *row_shape), n = ``len(self)`` (a copy, so that a later
        :meth:`enqueue` does not change a tensor autograd saved). Negatives do not care about order; use
        :meth:`oldest_first` when it matters."""
        return self.rows[: int(self.filled)].detach().clone()

    def oldest_first(self) -> Tensor:
        """A copy of the valid rows from the oldest to the newest: (n, *row_shape)."""
        if not self.is_full:
            return self.rows[: int(self.filled)].detach().clone()
        p = int(self.ptr)
        return torch.cat([self.rows[p:], self.rows[:p]]).detach()

    @torch.no_grad()
    def enqueue(self, x: Tensor, gather: bool = True) -> None:
        """Append ``x`` (B, *row_shape) (gathered from every rank first when ``gather``), overwriting the oldest
        rows; a batch longer than the queue keeps its last ``size`` rows."""
        if tuple(x.shape[1:]) != self.row_shape:
            raise ValueError(f"queue rows have shape {self.row_shape}, got a batch of shape {tuple(x.shape)}")
        x = concat_all_gather(x) if gather else x.detach()
        n = x.shape[0]
        if n == 0:
            return
        p = int(self.ptr)
        if n > self.size:  # only the last `size` rows survive; they land where a row-by-row append would put them
            p = (p + n - self.size) % self.size
            x = x[n - self.size :]
        idx = (p + torch.arange(x.shape[0], device=self.rows.device)) % self.size
        self.rows.index_copy_(0, idx, x.to(device=self.rows.device, dtype=self.rows.dtype))
        self.ptr.fill_((p + x.shape[0]) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))
