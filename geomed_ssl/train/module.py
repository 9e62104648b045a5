"""One Lightning module that drives any self-supervised method (the method owns its heads, loss and state)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from geomed_ssl.config import Recipe
from geomed_ssl.errors import TrainingError
from geomed_ssl.methods.base import SSLMethod


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> float:
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
    """A seed for one micro-batch's randomness (masks, crops), independent of any global RNG state."""
    return (seed * 1_000_003 + micro_step * 7_919 + 12_345) % (2**63 - 1)


class PretrainModule(L.LightningModule):
    """Runs ``method.training_loss`` each step; knows nothing method-specific.

    Every random draw of a step comes from a generator seeded by (seed, micro-step), so a resumed run continues
    exactly where the interrupted one stopped.
    """

    def __init__(self, method: SSLMethod, recipe: Recipe, effective_batch: int, extra_state: dict | None = None):
        super().__init__()
        self.method = method
        self.recipe = recipe
        self.effective_batch = effective_batch
        self.extra_state = extra_state or {}
        self.last_logs: dict[str, float] = {}

    @property
    def peak_lr(self) -> float:
        return self.recipe.train.base_lr * self.effective_batch / 256

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        t = self.recipe.train
        micro = self.global_step * t.accumulate_grad_batches + batch_idx % t.accumulate_grad_batches
        generator = torch.Generator().manual_seed(step_seed(t.seed, micro))
        out = self.method.training_loss(batch, self.global_step, generator)
        if not torch.isfinite(out.loss):
            raise TrainingError(
                f"the loss became {out.loss.item()} at step {self.global_step}; training stopped and the last good "
                "checkpoint was kept. Lower train.base_lr, check the data (inspect it with `geomed-ssl inspect`), "
                "or use train.precision=32, then resume with --resume."
            )
        logs = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.logs.items()}
        logs["loss"] = float(out.loss.detach())
        logs["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.last_logs = logs
        self.log("loss", logs["loss"], prog_bar=True, on_step=True, logger=True, batch_size=self.recipe.train.batch_size)
        for key, value in logs.items():
            if key != "loss":
                self.log(key, value, prog_bar=key in ("lr", "collapse"), on_step=True, batch_size=t.batch_size)
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        hook = getattr(self.method, "before_optimizer_step", None)
        if hook is not None:
            hook(self.global_step)
        wd_fn = getattr(self.method, "weight_decay", None)
        if wd_fn is not None:
            for group in optimizer.param_groups:
                if group.get("decays"):
                    group["weight_decay"] = wd_fn(self.global_step)

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
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, t.warmup_steps, t.max_steps, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # JSON-safe description so a checkpoint is self-describing and loads with weights_only=True.
        checkpoint["geomed_ssl"] = {"recipe": self.recipe.to_dict(), **self.extra_state}
