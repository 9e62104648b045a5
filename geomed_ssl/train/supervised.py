"""The Lightning module for fine-tuning with few labels: sparse cross-entropy + Dice, frozen or unfrozen encoder,
layer-wise lr decay, warmup + cosine."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from geomed_ssl.config import FinetuneConfig
from geomed_ssl.data.labelled import IGNORE
from geomed_ssl.errors import TrainingError
from geomed_ssl.train.console import lightning_reads_logs
from geomed_ssl.train.module import warmup_cosine


def sparse_dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over labelled pixels only (target != IGNORE), averaged over the classes present in the batch.

    logits: (B, K, *S); target: (B, *S) with class indices or IGNORE.
    """
    labelled = target != IGNORE
    if not labelled.any():
        return logits.sum() * 0.0
    probs = logits.float().softmax(1).movedim(1, -1)[labelled]  # (P, K)
    onehot = F.one_hot(target[labelled], num_classes).float()  # (P, K)
    inter = (probs * onehot).sum(0)
    denom = probs.sum(0) + onehot.sum(0)
    present = onehot.sum(0) > 0
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice[present].mean()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over labelled pixels (target != IGNORE), each weighted by its class's ``weight``, divided by
    the batch's summed weight as PyTorch's mean is, but 0 where that sum is 0 (a batch of zero-weight classes only,
    or no label), not 0 / 0."""
    if weight is None:
        if not (target != IGNORE).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=IGNORE)
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="sum")
    return total / weight[target[target != IGNORE]].sum().clamp_min(1e-12)


class SupervisedModule(L.LightningModule):
    """Trains ``model`` (segmentation or classification) on batches with ``image`` and ``target``.

    The encoder is frozen for the first ``unfreeze_after_steps`` steps when ``freeze_encoder`` (for ever when that
    is 0). All parameters sit in the optimiser from the start; frozen ones simply receive no gradient.
    """

    def __init__(self, model: torch.nn.Module, cfg: FinetuneConfig, num_classes: int, param_groups: list[dict],
                 class_weights: torch.Tensor | None = None, input_key: str = "image"):
        super().__init__()
        self.model, self.cfg, self.num_classes = model, cfg, num_classes
        self.groups = param_groups
        self.input_key = input_key
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(num_classes))
        self.last_logs: dict[str, float] = {}

    def encoder_trainable(self, step: int) -> bool:
        if not self.cfg.freeze_encoder:
            return True
        return self.cfg.unfreeze_after_steps > 0 and step >= self.cfg.unfreeze_after_steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        encoder = getattr(self.model, "encoder", None)
        if encoder is not None:
            trainable = self.encoder_trainable(self.global_step)
            encoder.requires_grad_(trainable)
            encoder.train(trainable)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logs: dict[str, float] = {}
        total = logits.new_zeros(())
        terms = self.cfg.loss.split("+")  # "ce", "dice" or "ce+dice" (validated with the recipe)
        if "ce" in terms:
            ce = weighted_cross_entropy(logits.float(), target, self.class_weights)
            total = total + ce
            logs["ce"] = float(ce.detach())
        if "dice" in terms and logits.ndim > 2:
            dice = sparse_dice_loss(logits, target, self.num_classes)
            total = total + dice
            logs["dice"] = float(dice.detach())
        return total, logs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch[self.input_key])
        loss, logs = self.loss(logits, batch["target"])
        if not torch.isfinite(loss):
            raise TrainingError(f"the fine-tuning loss became {loss.item()} at step {self.global_step}; lower "
                                "finetune.base_lr or check the labels; the last good checkpoint was kept.")
        logs["loss"] = float(loss.detach())
        logs["lr"] = self.trainer.optimizers[0].param_groups[-1]["lr"]
        self.last_logs = logs
        if lightning_reads_logs(self.trainer):
            self.log("loss", logs["loss"], prog_bar=True, batch_size=self.cfg.batch_size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        # each group carries its own lr (layer-wise decay); the schedule scales them all alike
        optimizer = torch.optim.AdamW(self.groups, lr=self.cfg.base_lr)
        warm, total = self.cfg.warmup_steps, self.cfg.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warm, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
