"""One Lightning module that drives any self-supervised method (the method owns its heads, loss and state)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from geomed_ssl.config import Recipe
from geomed_ssl.errors import TrainingError
from geomed_ssl.methods.base import SSLMethod, mix_seed
from geomed_ssl.methods.schedules import ScheduleClock


def warmup_cosine(step: float, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from 0, then cosine down to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, skip: set[str]) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases, position embeddings and tokens (ndim <= 1 or in ``skip``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "decays": True},
        {"params": no_decay, "weight_decay": 0.0, "decays": False},
    ]


def step_seed(seed: int, micro_step: int) -> int:
    """The seed of one micro-batch's step generator: the same on every rank (per-sample draws add the sample's
    global index, see ``methods.base.PerSample``), independent of any global RNG state."""
    return (seed * 1_000_003 + micro_step * 7_919 + 12_345) % (2**63 - 1)


class PretrainModule(L.LightningModule):
    """Runs ``method.training_loss`` each step; knows nothing method-specific.

    Every random draw of a step comes from a generator seeded by (seed, micro-step), per sample from (that, the
    sample's global index); the global torch RNG (drop path) is reseeded each micro-step from (seed, micro-step,
    rank). So a resumed run continues exactly where the interrupted one stopped, and under DDP the ranks draw
    different masks for different samples. Logged values are averaged over ranks. ``clock`` (a
    :class:`ScheduleClock`) drives the lr and the method's schedules and is stored in every checkpoint.
    """

    def __init__(self, method: SSLMethod, recipe: Recipe, effective_batch: int, extra_state: dict | None = None,
                 clock: ScheduleClock | None = None):
        super().__init__()
        self.method = method
        self.recipe = recipe
        self.effective_batch = effective_batch
        self.extra_state = extra_state or {}
        self.last_logs: dict[str, float] = {}
        self.clock = clock if clock is not None else method.clock
        method.clock = self.clock

    @property
    def peak_lr(self) -> float:
        return self.recipe.train.base_lr * self.effective_batch / 256

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        t = self.recipe.train
        micro = self.global_step * t.accumulate_grad_batches + batch_idx % t.accumulate_grad_batches
        seed = step_seed(t.seed, micro)
        torch.manual_seed(mix_seed(seed, self.global_rank))
        generator = torch.Generator().manual_seed(seed)
        out = self.method.training_loss(batch, self.global_step, generator)
        logs = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.logs.items()}
        logs["loss"] = float(out.loss.detach())
        logs = self._mean_over_ranks(logs)  # a non-finite loss on any rank stops every rank
        if not math.isfinite(logs["loss"]):
            raise TrainingError(
                f"the loss became {logs['loss']} at step {self.global_step}; training stopped and the last good "
                "checkpoint was kept. Lower train.base_lr, check the data (inspect it with `geomed-ssl inspect`), "
                "or use train.precision=32, then resume with --resume."
            )
        logs["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.last_logs = logs
        self.log("loss", logs["loss"], prog_bar=True, on_step=True, batch_size=t.batch_size)
        for key, value in logs.items():
            if key != "loss":
                self.log(key, value, prog_bar=key in ("lr", "collapse"), on_step=True, batch_size=t.batch_size)
        return out.loss

    def _mean_over_ranks(self, logs: dict[str, float]) -> dict[str, float]:
        """The logs averaged over ranks (one collective; every rank logs the same keys)."""
        if self.trainer.world_size == 1:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        values = self.trainer.strategy.reduce(values, reduce_op="mean")
        return dict(zip(keys, values.tolist()))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The method's declared hooks: ``before_optimizer_step``, then its ``weight_decay`` schedule (if any) on
        the decaying param groups."""
        self.method.before_optimizer_step(self.global_step)
        wd = self.method.weight_decay(self.global_step)
        if wd is not None:
            for group in optimizer.param_groups:
                if group.get("decays"):
                    group["weight_decay"] = wd

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The update, then ``method.after_step`` with the index of the update just made (the one its loss was
        computed at). It runs here, not in ``on_train_batch_end``: Lightning calls the callbacks' batch-end hooks
        (checkpoint, export, previews) before the module's, and they must see the teacher after this step's EMA."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.method.after_step(self.global_step)  # not yet incremented inside this hook

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.recipe.train
        groups = param_groups(self.method, t.weight_decay, self.method.no_weight_decay())
        optimizer = torch.optim.AdamW(groups, lr=self.peak_lr, betas=tuple(t.betas))
        min_ratio = t.min_lr / self.peak_lr if self.peak_lr > 0 else 0.0
        clock = self.clock
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(clock(step), t.warmup_steps, clock.total, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # JSON-safe description so a checkpoint is self-describing and loads with weights_only=True.
        checkpoint["geomed_ssl"] = {"recipe": self.recipe.to_dict(), "schedule": self.clock.to_dict(),
                                    **self.extra_state}
