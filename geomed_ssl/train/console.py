"""What a training run shows: a progress bar on stderr when it is a terminal, else a plain log line every N steps;
and none of Lightning's messages that only our own setup causes."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from geomed_ssl.train.run_log import say_in_run_log

log = logging.getLogger("geomed_ssl")

# Lightning warnings about choices we make on purpose (each with the reason):
OUR_CHOICES = (
    r".*isinstance\(treespec, LeafSpec\).*",  # a deprecation inside Lightning itself
    # the sampler starts at the checkpoint's step (StepOffsetSampler), so a mid-epoch resume replays exactly
    r"You're resuming from a checkpoint that ended before the epoch ended.*",
    # data.num_workers is the user's choice; on CPU 0 workers is fastest (docs/concepts.md, sampling)
    r"The '\w+' does not have many workers.*",
    # a run is steps over one endless epoch: Lightning's per-epoch bookkeeping has nothing to say about it
    r"The number of training batches \(\d+\) is smaller than the logging interval.*",
)


def quiet_lightning() -> None:
    """Lightning's start-up banners (GPU/TPU availability, tips) and the warnings listed in ``OUR_CHOICES`` are
    noise for our users; every other warning still shows."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in OUR_CHOICES:
        warnings.filterwarnings("ignore", message=pattern)


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, written to stderr (Lightning writes it to stdout, so redirected output fills with
    carriage-return frames); shows optimiser steps."""

    def init_train_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):  # Lightning passes file=sys.stdout, read at call time
            return super().init_train_tqdm()

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("steps")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._logs = contextlib.ExitStack()  # log lines above the bar, not glued to its frame ("...lr=4.69e-5]S")
        self._logs.enter_context(logging_redirect_tqdm())

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_logs": None}  # (ddp_spawn pickles the callbacks)

    def _logs_back(self) -> None:
        if getattr(self, "_logs", None) is not None:
            self._logs.close()
            self._logs = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logs_back()
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._logs_back()
        super().on_exception(trainer, pl_module, exception)


class PlainProgress(L.Callback):
    """One log line every ``every`` optimiser steps and at the last: step, loss, lr and steps per second;
    ``console`` False: in the run's log.txt only (:mod:`geomed_ssl.train.run_log`), beside a progress bar or none."""

    def __init__(self, every: int, console: bool = True) -> None:
        self.every = max(1, int(every))
        self.console = console
        self._seen, self._since, self._time = -1, 0, 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = self._since = trainer.global_step
        self._time = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._seen or not trainer.is_global_zero:
            return
        self._seen = step
        if step % self.every and step != trainer.max_steps:
            return
        now = time.monotonic()
        rate = (step - self._since) / max(now - self._time, 1e-9)
        self._since, self._time = step, now
        logs = getattr(pl_module, "last_logs", {}) or {}
        parts = [f"step {step}/{trainer.max_steps}"]
        if "loss" in logs:
            parts.append(f"loss {logs['loss']:.4f}")
        if "lr" in logs:
            parts.append(f"lr {logs['lr']:.3g}")
        line = "  ".join(parts + [f"{rate:.2f} it/s"])
        if self.console and log.isEnabledFor(logging.INFO):
            log.info(line)  # the run's log.txt gets it too
        else:  # no console line (a bar shows the steps, or none is wanted), or INFO filtered out (--quiet, Python)
            say_in_run_log(line)


def progress_callbacks(enabled: bool, every: int) -> list[L.Callback]:
    """A bar on stderr when it is a terminal, else plain lines every ``every`` steps; nothing on the console when
    disabled. The plain lines go to a pretraining run's log.txt in every case."""
    if not enabled:
        return [PlainProgress(every, console=False)]
    if sys.stderr.isatty():
        return [StderrProgressBar(refresh_rate=1), PlainProgress(every, console=False)]
    return [PlainProgress(every)]


class ConsoleSettings(L.Callback):
    """Carries this process's console settings (log level, Lightning quieted) into processes started with
    ``strategy=ddp_spawn``: they are fresh interpreters, and unpickling this callback there applies the settings
    before Lightning prints anything."""

    def __init__(self) -> None:
        self.level = logging.getLogger().getEffectiveLevel()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        quiet_lightning()
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")  # a spawned rank: as the CLI's
        if not logging.getLogger().handlers:
            logging.basicConfig(level=self.level, format="%(message)s", stream=sys.stderr)


def lightning_reads_logs(trainer: L.Trainer) -> bool:
    """Whether anything reads what a module passes to ``self.log``: a progress bar or a logger (TensorBoard, when it
    is installed). Without either, logging costs ~1 ms per key and step for nothing: metrics.csv and the plain
    progress lines read the module's ``last_logs``."""
    return trainer.progress_bar_callback is not None or bool(trainer.loggers)


def has_bar(callbacks: list[L.Callback]) -> bool:
    return any(isinstance(c, TQDMProgressBar) for c in callbacks)


class WorkProgress:
    """How far a long job (a scene's or volume's windows) has got: a tqdm bar on stderr when it is a terminal,
    else (a batch job's log) a line every ``every`` seconds with the share done and the time left; nothing under
    ``--quiet`` or with ``shown`` False. ``total`` None: a count without a share."""

    def __init__(self, total: int | None, what: str, unit: str = "window", every: float = 60.0,
                 shown: bool = True) -> None:
        from tqdm.auto import tqdm

        self.total, self.what, self.unit, self.every = total, what, unit, every
        self.done, self.start = 0, time.monotonic()
        self.last = self.start
        shown = shown and log.isEnabledFor(logging.INFO)
        self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, leave=False,
                        disable=not (shown and sys.stderr.isatty()))
        self.lines = shown and self.bar.disable

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if self.lines and now - self.last >= self.every:
            self.last = now
            if self.total:
                left = (now - self.start) * max(self.total - self.done, 0) / max(self.done, 1)
                log.info("%s: %d of %d %ss (%.0f %%), about %.0f min left", self.what, self.done, self.total,
                         self.unit, 100 * self.done / self.total, left / 60)
            else:
                log.info("%s: %d %ss", self.what, self.done, self.unit)

    def close(self) -> None:
        self.bar.close()
