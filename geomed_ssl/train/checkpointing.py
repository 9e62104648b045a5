"""Checkpoints that survive kills: atomic writes, the resume checkpoint, and saving on SIGTERM / SIGINT / SIGUSR1.

Rules. A checkpoint is written to a temporary file in its own folder (``.partial-<pid>.<host>-last.ckpt``, created
with the user's umask), flushed and fsynced, then renamed over the old one (:mod:`geomed_ssl.outfiles`), so a kill or
a full disk leaves the previous checkpoint whole. ``checkpoints/last.ckpt`` is refreshed every
``train.checkpoint_every`` steps (with a kept ``step-NNNNNN.ckpt``), every ``train.checkpoint_minutes`` of wall time,
when SIGTERM, SIGINT or SIGUSR1 arrives (cluster preemption, Ctrl-C, Slurm's advance warning: saved at the next step
boundary, then the run stops; a second Ctrl-C aborts at once) and at the end. Only global rank 0 writes; every
decision is taken by all ranks together. ``--resume`` takes the checkpoint that loads with the highest step
(``last.ckpt`` or the newest ``step-*.ckpt``) and says which it skipped and why.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from geomed_ssl.errors import GeomedError, TrainingError
from geomed_ssl.outfiles import atomic_write, remove_stale_partials, replace_with_copy

log = logging.getLogger("geomed_ssl")

STEP_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`geomed_ssl.outfiles.atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with the write made atomic in the checkpoint's own folder (Lightning's
    writes through a temporary directory and copies across filesystems, so a kill could truncate ``last.ckpt``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(checkpoint, path)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete what killed writes of ours left in a run folder and the subfolders it writes files into
    (``checkpoints/``, ``previews/``): partial files and folders of processes that are gone
    (:func:`geomed_ssl.outfiles.remove_stale_partials`)."""
    removed = remove_stale_partials(run_dir)
    for sub in ("checkpoints", "previews"):
        removed += remove_stale_partials(run_dir / sub)
    if removed:
        log.info(f"removed {len(removed)} temporary file(s) left by an interrupted write: "
                 + ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    return removed


# ---- resume ------------------------------------------------------------------------------------------------------
@dataclass
class ResumePoint:
    """The checkpoint a resumed run starts from."""

    path: Path
    step: int
    info: dict[str, Any]  # the checkpoint's ``geomed_ssl`` section (recipe, schedule, encoder, method)


def all_finite(tensors: Any) -> bool:
    """Whether every floating-point tensor of ``tensors`` holds finite values only (one device sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def read_checkpoint_info(path: Path, finite: bool = False) -> tuple[int, dict[str, Any]]:
    """``(global_step, geomed_ssl section)`` of a pretraining checkpoint, loaded with ``weights_only=True``
    (memory-mapped, so the tensors are not read unless ``finite`` asks that its weights hold no NaN or infinity).
    Raises ``GeomedError`` with the reason in words."""
    if path.stat().st_size == 0:
        raise GeomedError("empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise GeomedError("it holds pickled Python objects, which are never loaded: only tensors and plain "
                          "values are read") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        raise GeomedError("truncated or damaged (not a complete checkpoint file)") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("geomed_ssl"), dict):
        raise GeomedError("not a geomed-ssl pretraining checkpoint")
    if finite and not all_finite(ckpt["state_dict"].values()):
        raise GeomedError("its weights hold NaN or infinity (saved as the training diverged)")
    return int(ckpt.get("global_step", 0)), ckpt["geomed_ssl"]


def resume_misfit(checkpoint: dict[str, Any], state: dict[str, torch.Tensor], group_sizes: list[int],
                  recipe: dict[str, Any]) -> str | None:
    """Why a resumed run's module (built from the recipe as it is now, ``--set`` values included) cannot take the
    checkpoint's weights or optimiser state, or would compute other than the network that was trained (a
    ``model.*`` setting changed, e.g. ``model.drop_path``), in words naming the recipe keys that changed; None when
    it can. Lightning would otherwise stop with a raw size-mismatch error from ``load_state_dict``."""
    saved = checkpoint.get("state_dict", {})
    differ = sorted(k for k in set(saved) | set(state)
                    if k not in saved or k not in state or tuple(saved[k].shape) != tuple(state[k].shape))
    saved_groups = [len(g.get("params", [])) for g in (checkpoint.get("optimizer_states") or [{}])[0]
                    .get("param_groups", [])]
    old = flat_settings((checkpoint.get("geomed_ssl") or {}).get("recipe") or {})
    new = flat_settings(recipe)
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
               if k.split(".")[0] in ("model", "method", "data") and old[k] != new[k]]
    model = [c for c in changed if c.startswith("model.")]
    groups_differ = bool(saved_groups) and saved_groups != group_sizes
    if not differ and not groups_differ and not model:
        return None
    if differ:
        what = f"{len(differ)} weight tensor(s) differ in shape or presence, e.g. '{differ[0]}'"
    elif groups_differ:
        what = (f"the optimiser's groups hold {saved_groups} tensors in the checkpoint and {group_sizes} now "
                "(trainable weights were frozen or unfrozen)")
    else:
        what = "the network's settings (model.*) are those it was trained with, whatever --set says"
    hint = f"; changed since the checkpoint: {', '.join(changed)}" if changed else ""
    return (f"--resume: the checkpoint does not fit the network this recipe builds now ({what}{hint}). Resume "
            "without the --set values that change the model or the method's weights, or start a new run (another "
            "--out, or --overwrite).")


HOW_IT_RUNS = ("data.num_workers", "data.cache_volumes", "data.stats_windows", "data.knn_every", "data.val_labels",
               "train.accelerator", "train.strategy", "train.checkpoint_every", "train.keep_checkpoints",
               "train.checkpoint_minutes", "train.preview_every", "train.log_every",
               "train.max_steps")  # (a longer run's schedule is said on its own: resumed_clock)
TRAINING_SECTIONS = ("data", "model", "method", "train", "augment")  # finetune / labels: not pretraining's
PER_PROCESS = ("train.batch_size", "train.devices", "train.num_nodes")  # their product: the global batch


def resume_changes(checkpoint: dict[str, Any], recipe: dict[str, Any], overrides: list[str] | None = None
                   ) -> list[str]:
    """The settings that train otherwise from a resumed checkpoint on than before it (``key old -> new``): any of
    the recipe's training sections but the ones that only say how it runs or is watched (:data:`HOW_IT_RUNS`:
    workers, device, caches, checkpoint, log and monitor cadence, the run's length; and ``train.batch_size``,
    ``devices`` and ``num_nodes`` where their product, the global batch, stays the same). A key the checkpoint's recipe
    lacks (a setting added since its version, at the value that version worked with) is a change only when this
    resume's ``overrides`` set it."""
    from geomed_ssl.config.loading import sets_key

    old = flat_settings((checkpoint.get("geomed_ssl") or {}).get("recipe") or {})
    new = flat_settings(recipe)
    same_batch = global_batch(old) is not None and global_batch(old) == global_batch(new)  # 2 x 4 then 1 x 8
    keys = [k for k in sorted(new) if k.split(".")[0] in TRAINING_SECTIONS and k not in HOW_IT_RUNS
            and not (same_batch and k in PER_PROCESS)]
    return [f"{k} {old[k]!r} -> {new[k]!r}" if k in old else f"{k} (new) {new[k]!r}" for k in keys
            if (k in old and old[k] != new[k]) or (k not in old and sets_key(overrides, k))]


def global_batch(flat: dict[str, Any]) -> int | None:
    """The samples of one optimiser step over every process (``train.batch_size`` x ``train.devices`` x
    ``train.num_nodes``) of a flat recipe (:func:`flat_settings`); None where the devices are not a count. A run
    of several processes trains as one process would on the same global batch, so only this product counts."""
    counts = [flat.get(k, 1) for k in PER_PROCESS]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts):
        return None
    return counts[0] * counts[1] * counts[2]


def flat_settings(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of a recipe dict (nested sections joined with dots)."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def checkpoint_candidates(ckpt_dir: Path) -> list[Path]:
    """``last.ckpt``, then ``step-*.ckpt`` newest first."""
    steps = sorted(((int(m.group(1)), p) for p in ckpt_dir.glob("step-*.ckpt")
                    if (m := STEP_PATTERN.match(p.name))), reverse=True)
    last = ckpt_dir / "last.ckpt"
    return ([last] if last.is_file() else []) + [p for _, p in steps]


def _first_readable(paths: list[Path], skipped: list[str]) -> ResumePoint | None:
    """The first of ``paths`` that reads as a pretraining checkpoint; each unreadable one is added to ``skipped``."""
    for path in paths:
        try:
            step, info = read_checkpoint_info(path, finite=True)
        except GeomedError as reason:
            skipped.append(f"{path.name}: {reason}")
            continue
        return ResumePoint(path, step, info)
    return None


def find_resume_checkpoint(run_dir: Path, announce: bool = True) -> ResumePoint:
    """The readable checkpoint of ``run_dir`` with the highest global step: ``last.ckpt`` or the newest readable
    ``step-*.ckpt``, whichever is further (a kill between writing ``step-N.ckpt`` and linking ``last.ckpt`` leaves
    ``last.ckpt`` older; a tie goes to ``last.ckpt``). Each unreadable one is skipped with a one-line message. No
    readable checkpoint: a ``GeomedError`` that names the way out (a folder with no run in it was refused before,
    by ``resuming.resolve_recipe``)."""
    ckpt_dir = run_dir / "checkpoints"
    candidates = checkpoint_candidates(ckpt_dir) if ckpt_dir.is_dir() else []
    last = ckpt_dir / "last.ckpt"
    skipped: list[str] = []
    points = [_first_readable([p for p in candidates if p == last], skipped),
              _first_readable([p for p in candidates if p != last], skipped)]
    points = [p for p in points if p is not None]
    if points:
        best = max(points, key=lambda p: p.step)  # the first of equals: last.ckpt
        if announce and skipped:
            log.warning(f"--resume: skipping {'; '.join(skipped)}. Continuing from {best.path} (step {best.step}).")
        elif announce and best.path != last and last.is_file():
            log.warning(f"--resume: {best.path.name} (step {best.step}) is further than last.ckpt; continuing from "
                        "it.")
        return best
    if skipped:
        why = f"no readable checkpoint in '{ckpt_dir}' ({'; '.join(skipped)})"
    else:
        why = f"no checkpoint in '{ckpt_dir}': the run was stopped before its first checkpoint"
    raise GeomedError(f"--resume: {why}. Start it again with --overwrite (replaces '{run_dir}') or choose another "
                      "--out.")


# ---- stopping on signals -----------------------------------------------------------------------------------------
# Slurm's advance warning (``#SBATCH --signal=USR1@90``; where Lightning would requeue): none on Windows
SLURM_WARNING = (signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()


class StopRequest:
    """SIGTERM / SIGINT / SIGUSR1 handlers that only set a flag: the run saves a checkpoint at the next step
    boundary and stops. A second SIGINT raises ``KeyboardInterrupt`` at once. Handlers can be installed only in the main
    thread; elsewhere ``install`` does nothing. ``forward_to(send)``: the process that launched the workers
    (``ddp_spawn`` / ``ddp_fork``) passes each signal on to them as ``send(SIGTERM)`` (so a Ctrl-C that reaches the
    workers from the terminal too is still one stop, not an abort); a forked worker, which inherits these handlers,
    never forwards."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, *SLURM_WARNING)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.announce = True  # rank 0 says what happens; the other ranks stay quiet
        self._previous: dict[int, Any] = {}
        self._forward: Callable[[int], None] | None = None
        self._forward_pid: int | None = None
        self._sigints = 0

    def forward_to(self, send: Callable[[int], None]) -> None:
        """Pass every signal this process receives on with ``send(signum)`` (from this process only)."""
        self._forward, self._forward_pid = send, os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def aborted(self) -> bool:
        """A second SIGINT came: the run was aborted without saving."""
        return self._sigints > 1

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def install(self) -> None:
        try:
            previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            return
        self._previous = {**previous, **self._previous}  # keep the first handlers seen when installed twice

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            except ValueError:
                return
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._forward is not None and os.getpid() == self._forward_pid:
            self._forward(signal.SIGTERM)  # a stop, never an abort: a terminal's Ctrl-C reaches the workers too
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                self.restore()
                raise KeyboardInterrupt
        if self.signum is not None:  # already stopping; the first signal names the stop
            return
        self.signum = signum
        if self.announce:
            log.warning(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
                        "stopping" + (" (Ctrl-C again aborts without saving)." if signum == signal.SIGINT else "."))

    def heard(self, signum: int) -> None:
        """Stop for ``signum``, which reached another process of this run (a ``kill`` of one rank): this one then
        reports the stop, and exits, as if it had received it."""
        self.signum = signum
        if self.announce:
            log.warning(f"{signal.Signals(signum).name} reached another process of this run: saving a checkpoint at "
                        "the end of this step, then stopping.")

    def __getstate__(self) -> dict[str, Any]:  # handlers and forwarding do not travel to spawned processes
        return {**self.__dict__, "_previous": {}, "_forward": None, "_forward_pid": None}


def stop_safe_worker_init(worker_id: int, rank: int | None = None) -> None:
    """``worker_init_fn`` of the training DataLoaders (pretraining and fine-tuning): their workers ignore SIGTERM,
    SIGINT and SIGUSR1, which ``timeout``, Slurm, ``docker stop`` or a terminal's Ctrl-C send to the whole process
    group; a worker killed by one made the training process fail with a traceback instead of stopping as asked
    (saving its stop checkpoint). The training process ends its workers itself. Lightning's per-worker seeding
    (which it adds only when no ``worker_init_fn`` is set) still runs."""
    for signum in (signal.SIGTERM, signal.SIGINT, *SLURM_WARNING):
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


def any_rank(trainer: L.Trainer, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all ranks (one collective when there are several), so every rank decides alike."""
    if trainer.world_size == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=trainer.strategy.root_device)
    t = trainer.strategy.reduce(t, reduce_op="sum")
    return [bool(v > 0) for v in t.tolist()]


STEP_FILE = re.compile(r"step-(\d{6,})\.ckpt")


def prune_step_files(dirpath: Path, step: int, keep: int | None) -> None:
    """Delete the ``step-NNNNNN.ckpt`` files of steps up to ``step`` but the newest ``keep`` (None: none deleted);
    called once ``last.ckpt`` holds the newest, so the checkpoint a resume reads is never among them. Files of later
    steps (a longer run's, before a resume from an earlier step) and other names are left alone."""
    if keep is None:
        return
    steps = sorted(int(m.group(1)) for f in os.listdir(dirpath) if (m := STEP_FILE.fullmatch(f)))
    for old in [s for s in steps if s <= step][:-keep]:
        try:
            (dirpath / f"step-{old:06d}.ckpt").unlink()
        except FileNotFoundError:  # gone already (removed by hand)
            pass


# settings added after runs were started, with the value a run that predates them (its config.yaml lacks the key)
# ran with, and the note a resume of it prints: (section, key, value then, the runs it concerns, note)
AS_STARTED: tuple[tuple[str, str, Any, Callable[[Any], bool], str], ...] = (
    ("train", "keep_checkpoints", None, lambda recipe: True,
     "note: this run was started when every step-*.ckpt was kept, so it keeps them all (train.keep_checkpoints=null); "
     "--set train.keep_checkpoints=N keeps only the newest N."),
    ("data", "min_foreground_fraction", 0.0, lambda recipe: recipe.data.kind == "volume",
     "note: this run was started when volumes' windows were drawn anywhere, so it goes on so "
     "(data.min_foreground_fraction=0) and sees the batches it would have seen; --set "
     "data.min_foreground_fraction=0.25 draws them on anatomy."),
)


def kept_as_started(recipe: Any, raw: dict[str, Any] | None, overrides: list[str] | None) -> Any:
    """A run started before a setting of :data:`AS_STARTED` existed (its saved recipe ``raw``, config.yaml's or its
    checkpoint's, has no such key) goes on with the value it was started with, unless ``--set`` says otherwise: a run
    that kept every ``step-*.ckpt`` keeps them all (none is deleted unasked); volumes' windows stay drawn anywhere (a
    resumed run sees the same batches)."""
    from geomed_ssl.config.loading import sets_key

    if raw is None:  # unreadable: nothing to tell the run's first settings by
        return recipe
    for section, key, then, concerns, note in AS_STARTED:
        current = getattr(recipe, section)
        if (not concerns(recipe) or sets_key(overrides, f"{section}.{key}") or getattr(current, key) == then
                or key in (raw.get(section) or {})):
            continue
        log.info(note)
        recipe = replace(recipe, **{section: replace(current, **{key: then})})
    return recipe


class RunCheckpoints(L.Callback):
    """Writes ``last.ckpt`` every ``every`` steps (plus a kept ``step-NNNNNN.ckpt``, the newest ``keep`` of them
    kept; None: all), every ``minutes`` of wall time, on a stop request (then stops the run) and at the last step.
    Saving goes through ``trainer.save_checkpoint`` (every rank calls it, rank 0 writes through
    :class:`AtomicCheckpointIO`)."""

    def __init__(self, dirpath: str | Path, every: int, minutes: float, stop: StopRequest | None = None,
                 keep: int | None = None):
        self.dirpath = Path(dirpath)
        self.every, self.minutes, self.keep = int(every), float(minutes), keep
        self.stop = stop if stop is not None else StopRequest()
        self.stopped_at: int | None = None
        self._seen = -1
        self._last_save = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning installed its own SIGTERM handler (which would exit without saving): ours replace it
        self.stop.announce = trainer.is_global_zero
        self.stop.install()
        self._seen = trainer.global_step
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._seen:  # inside an accumulated step: only step boundaries are saved
            return
        self._seen = step
        timed = self.minutes > 0 and time.monotonic() - self._last_save >= 60 * self.minutes
        timed, *received = any_rank(trainer, timed, *(self.stop.signum == s for s in StopRequest.SIGNALS))
        stop = any(received)
        if stop and not self.stop.requested:  # another rank's signal: this one stops for it, by its name
            self.stop.heard(next(s for s, got in zip(StopRequest.SIGNALS, received) if got))
        periodic, final = step % self.every == 0, step >= trainer.max_steps
        if not (periodic or final or timed or stop):
            return
        if not all_finite(pl_module.parameters()):  # the same weights on every rank: every rank stops here
            raise TrainingError(
                f"the weights became NaN or infinite in step {step}, so no checkpoint was written for it and "
                "training stopped; the earlier checkpoints are kept. Lower train.base_lr (or use "
                "train.precision=32), then resume with --resume and --set train.base_lr=...")
        last = self.dirpath / "last.ckpt"
        if periodic:
            step_file = self.dirpath / f"step-{step:06d}.ckpt"
            trainer.save_checkpoint(step_file, weights_only=False)
            if trainer.is_global_zero:
                replace_with_copy(step_file, last)
                prune_step_files(self.dirpath, step, self.keep)
        else:
            trainer.save_checkpoint(last, weights_only=False)
        self._last_save = time.monotonic()
        if stop and not final:  # the caller reports the stop (pretrain's RunResult.stopped; the CLI prints it)
            self.stopped_at = step
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stop.restore()
