"""One Lightning module that drives any self-supervised method (the method owns its heads, loss and state)."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import lightning as L
import torch

from geomed_ssl.config import Recipe
from geomed_ssl.errors import TrainingError
from geomed_ssl.methods.base import PerSample, SSLMethod, mix_seed
from geomed_ssl.models.blocks import Draws, SampleDropPath, drop_path_draws
from geomed_ssl.train.checkpointing import all_finite
from geomed_ssl.train.console import lightning_reads_logs
from geomed_ssl.methods.schedules import ScheduleClock, warmup_cosine

log = logging.getLogger("geomed_ssl")


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


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s generator (an optimiser step, or a micro-step for the global RNG): the same on
    every rank (per-sample draws add the sample's global index, see ``methods.base.PerSample``), independent of any
    global RNG state."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def per_sample_draws(batch: dict, seed: int) -> Draws:
    """Stochastic depth's draws for ``models.blocks.drop_path_draws``: a forward of R rows, R a multiple of the
    batch's B samples (views stacked view by view), gives row r sample r % B's own draw (:class:`PerSample`, its
    global index) for (layer, call, view r // B), so the ranks of a DDP run drop exactly what one process drops on
    the global batch; any other row count, or a batch without indices, draws from the per-rank global RNG."""
    index = batch.get("index")
    samples = None if index is None else PerSample(torch.Generator().manual_seed(mix_seed(seed, 0xD207)),
                                                   index.tolist() if torch.is_tensor(index) else list(index))

    def draws(layer: int, call: int, rows: int) -> torch.Tensor | None:
        if samples is None or not len(samples) or rows % len(samples):
            return None
        views = range(rows // len(samples))
        return torch.cat([samples.uniform(mix_seed(layer, call, v)) for v in views])

    return draws


def diverged_advice(trainer: L.Trainer) -> str:
    """What to do after training diverged: resume from the last checkpoint when there is one, else start again."""
    from pathlib import Path

    kept = any(Path(trainer.default_root_dir, "checkpoints").glob("*.ckpt"))
    fix = ("lower train.base_lr, check the data (inspect it with `geomed-ssl inspect`), or use "
           "train.precision=32")
    if kept:
        return (f"The checkpoints written before it are kept (none holds NaN weights); {fix}, then resume with "
                "--resume, or start again with --overwrite if the last one trained with a rate far too high.")
    return f"No checkpoint was written before it; {fix}, then start again with --overwrite."


def step_mean(values: list[float]) -> float:
    """The mean of one log key over a step's micro-batches; a value they all share (the lr, a schedule's) as it is,
    never changed by the rounding of a sum."""
    return values[0] if all(v == values[0] for v in values) else sum(values) / len(values)


class PretrainModule(L.LightningModule):
    """Runs ``method.training_loss`` each step; knows nothing method-specific.

    Every random draw of a step comes from a generator seeded by (seed, optimiser step), per sample from (that,
    the sample's global index), the same for every micro-batch of an accumulated step, stochastic depth's too
    (:func:`per_sample_draws`); the global torch RNG is reseeded each micro-step from (seed, micro-step, rank). So
    a resumed run continues exactly where the interrupted one stopped, the ranks draw different masks for different
    samples, and a sample's draws do not depend on how the global batch is split over ranks and micro-batches.
    Logged values are averaged over ranks.
    ``clock`` (a :class:`ScheduleClock`) drives the lr and the method's schedules and is stored in every checkpoint.
    """

    def __init__(self, method: SSLMethod, recipe: Recipe, effective_batch: int, extra_state: dict | None = None,
                 clock: ScheduleClock | None = None):
        super().__init__()
        self.method = method
        self.recipe = recipe
        self.effective_batch = effective_batch
        self.extra_state = extra_state or {}
        self.last_logs: dict[str, float] = {}
        self._step_logs: list[dict[str, float]] = []  # the logs of this step's micro-batches so far
        self.clock = clock if clock is not None else method.clock
        method.clock = self.clock
        # whether any layer drops paths (the method's modules are fixed from here): else no per-step draws at all
        self.drops_paths = any(isinstance(m, SampleDropPath) and m.drop_prob > 0 for m in method.modules())

    @property
    def peak_lr(self) -> float:
        return self.recipe.train.base_lr * self.effective_batch / 256

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        t = self.recipe.train
        micro = self.global_step * t.accumulate_grad_batches + batch_idx % t.accumulate_grad_batches
        torch.manual_seed(mix_seed(step_seed(t.seed, micro), self.global_rank))
        generator = torch.Generator().manual_seed(step_seed(t.seed, self.global_step))
        draws = (drop_path_draws(self.method, per_sample_draws(batch, step_seed(t.seed, self.global_step)))
                 if self.drops_paths else contextlib.nullcontext())
        with draws:
            out = self.method.training_loss(batch, self.global_step, generator)
        logs = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.logs.items()}
        logs["loss"] = float(out.loss.detach())
        logs = self._mean_over_ranks(logs)  # a non-finite loss on any rank stops every rank
        if not math.isfinite(logs["loss"]):
            raise TrainingError(f"the loss became {logs['loss']} in step {self.global_step + 1}; training stopped. "
                                f"{diverged_advice(self.trainer)}")
        logs["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        if batch_idx % t.accumulate_grad_batches == 0:  # the step's first micro-batch
            self._step_logs = []
        self._step_logs.append(logs)  # metrics.csv gets the step's mean: what one batch that many times larger logs
        logs = {k: step_mean([m[k] for m in self._step_logs if k in m]) for k in logs}
        self.last_logs = logs
        if lightning_reads_logs(self.trainer):
            self.log("loss", logs["loss"], prog_bar=True, on_step=True, batch_size=t.batch_size)
            for key, value in logs.items():
                if key != "loss":
                    self.log(key, value, prog_bar=key in ("lr", "collapse"), on_step=True, batch_size=t.batch_size)
        return out.loss

    def _mean_over_ranks(self, logs: dict[str, float]) -> dict[str, float]:
        """The logs averaged over ranks (one collective; every rank logs the same keys)."""
        if self.trainer.world_size == 1:
            return logs
        keys = sorted(logs)  # the same order on every rank
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        reduced = dict(zip(keys, self.trainer.strategy.reduce(values, reduce_op="mean").tolist()))
        return {k: reduced[k] for k in logs}  # in the method's order, as one process writes its columns

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before an update with NaN or infinite gradients would write them into the weights (except under
        float16 mixed precision, whose loss scaler skips such steps itself); then the method's declared hooks:
        ``before_optimizer_step`` and its ``weight_decay`` schedule (if any) on the decaying param groups."""
        fp16 = "16-mixed" in str(self.trainer.precision) and "bf16" not in str(self.trainer.precision)
        if not fp16 and not all_finite(p.grad for p in self.method.parameters()):  # all-reduced: every rank
            raise TrainingError(f"the gradients became NaN or infinite in step {self.global_step + 1}, before "
                                f"the weights were updated; training stopped. {diverged_advice(self.trainer)}")
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run follows its recipe as it is now (``--resume --set train.base_lr=...``, another device
        count or batch): Lightning would restore the saved peak lr, betas and weight decay with the optimiser and
        the lr schedule, so they are replaced in the checkpoint before it is loaded (the step, the moments and the
        schedule clock are kept). The lr of the next step follows in ``on_train_start``."""
        t, peak = self.recipe.train, self.peak_lr
        for state in checkpoint.get("optimizer_states", [])[:1]:
            for group in state.get("param_groups", []):
                group["initial_lr"], group["betas"] = peak, tuple(t.betas)
                if group.get("decays"):
                    group["weight_decay"] = t.weight_decay
        for sched in checkpoint.get("lr_schedulers", [])[:1]:
            old = sched.get("base_lrs") or [peak]
            if any(abs(b - peak) > 1e-12 * max(abs(b), abs(peak)) for b in old):
                log.info(f"--resume: peak lr {old[0]:.4g} -> {peak:.4g} (train.base_lr {t.base_lr:g} x effective "
                         f"batch {self.effective_batch} / 256), from the recipe as it is now.")
            sched["base_lrs"] = [peak] * len(old)
        self._resumed = True

    def on_train_start(self) -> None:
        if not getattr(self, "_resumed", False):
            return
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)  # what LambdaLR sets at this step, from the new peak
        scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # JSON-safe description so a checkpoint is self-describing and loads with weights_only=True.
        checkpoint["geomed_ssl"] = {"recipe": self.recipe.to_dict(), "schedule": self.clock.to_dict(),
                                    **self.extra_state}
