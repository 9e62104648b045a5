"""Lightning callbacks of ours: metrics CSV that survives resume, encoder export, reconstruction previews.

Each writes on global rank 0 only (the other ranks of a DDP run compute the same values and touch no file)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import lightning as L

from geomed_ssl.checkpoint import save_encoder
from geomed_ssl.outfiles import atomic_path, atomic_write


class MetricsCSV(L.Callback):
    """One row per ``every`` steps in ``metrics.csv``: the file written whole (atomically) at the start and
    when a column appears, each other row appended and synced (rewriting 30,000 rows every 10 steps of a long run
    cost a third of a second each time); on resume, rows after the resumed step are dropped, and a row a kill cut
    short with them."""

    def __init__(self, path: str | Path, every: int = 10):
        self.path = Path(path)
        self.every = every
        self.rows: list[dict[str, Any]] = []
        self._keys: list[str] = ["step"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.path.exists():
            with self.path.open(newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if None not in r.values() and None not in r
                             and r["step"].isdigit() and int(r["step"]) <= trainer.global_step]
        self._write()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps done, so the row of step s is written after update s
        if not trainer.is_global_zero or not getattr(pl_module, "last_logs", None) or step == 0:
            return
        if step % self.every == 0 or step == trainer.max_steps:
            if self.rows and int(self.rows[-1]["step"]) == step:
                return  # several micro-batches of one accumulated step
            self.rows.append({"step": step, **pl_module.last_logs})
            self._append(self.rows[-1])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write()

    def _append(self, row: dict[str, Any]) -> None:
        if any(k not in self._keys for k in row):  # a new column: a new header, so the whole file
            self._write()
            return
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self._keys).writerow(row)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:  # removed while the run goes: written whole again
            self._write()
            return
        try:
            os.write(fd, buffer.getvalue().encode())
            os.fsync(fd)  # before the step's checkpoint: a resume never lacks the row of its step
        finally:
            os.close(fd)

    def _write(self) -> None:
        keys: list[str] = ["step"]
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, lambda f: f.write(buffer.getvalue().encode()))
        self._keys = keys


class ExportEncoder(L.Callback):
    """Writes ``encoder/`` (safetensors + JSON) every ``every`` steps and at the end, atomically."""

    def __init__(self, out_dir: str | Path, every: int, extra: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.every = every
        self.extra = extra
        self.done_step = -1

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.global_step != self.done_step:
            from geomed_ssl.train.checkpointing import all_finite

            if not all_finite(pl_module.parameters()):  # diverged: the last good export stays (the run stops)
                return
            self.done_step = trainer.global_step
            extra = {**self.extra, "step": trainer.global_step}
            save_encoder(pl_module.method.export_encoder(), self.out_dir, extra)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resume with nothing left to train (a run killed after its last checkpoint, before the export) skips
        the training hooks: export the checkpoint's weights here when the folder's encoder is of another step."""
        if trainer.is_global_zero and trainer.global_step != self.done_step \
                and exported_step(self.out_dir) != trainer.global_step:
            self.export(trainer, pl_module)


def exported_step(folder: Path) -> int | None:
    """The step of the encoder exported in ``folder`` (its config.json), None when there is none readable."""
    try:
        return int(json.loads((Path(folder) / "config.json").read_text()).get("step"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


class Previews(L.Callback):
    """Calls ``render(pl_module, step, path)`` every ``every`` steps and at the end (rank zero only)."""

    def __init__(self, out_dir: str | Path, every: int, render: Callable[[L.LightningModule, int, Path], None]):
        self.out_dir = Path(out_dir)
        self.every = every
        self.render = render
        self.done_step = -1

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.global_step == self.done_step:
            return
        self.done_step = trainer.global_step
        self.out_dir.mkdir(parents=True, exist_ok=True)
        was_training = pl_module.training
        pl_module.eval()
        with atomic_path(self.out_dir / f"step-{trainer.global_step:06d}.png") as tmp:
            self.render(pl_module, trainer.global_step, tmp)
        pl_module.train(was_training)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every and trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every:
            self._run(trainer, pl_module)
