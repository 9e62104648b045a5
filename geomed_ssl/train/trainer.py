"""The Lightning Trainer: precision resolved for the hardware, the launch settings tried before anything is written
(:func:`probe_trainer`, also used by fine-tuning) and the trainer of a pretraining run (:func:`build_trainer`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from geomed_ssl.cpus import fit_threads_to_quota, usable_cpus
from geomed_ssl.errors import ConfigError, TrainingError
from geomed_ssl.train.checkpointing import AtomicCheckpointIO
from geomed_ssl.train.console import has_bar, quiet_lightning
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
_SAID: set[str] = said_set()  # notes said once per command
_capped: set[tuple[int, int]] = said_set()  # (asked, CPUs) already said, so a compare's many fine-tunes say it once


def loader_workers(requested: int) -> int:
    """``data.num_workers``, at most the CPUs this process may use. A run's config.yaml travels with it: one made on
    a large GPU machine and resumed, fine-tuned or compared on a laptop would start more worker processes than
    there are cores, which slow each other (torch warns); a container's CPU quota counts (:mod:`geomed_ssl.cpus`).
    Batches do not depend on the worker count."""
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _capped:
        _capped.add((requested, cpus))
        log.info(f"data.num_workers {requested} lowered to {cpus}, the number of CPUs this process may use.")
    return cpus


def worker_died(err: BaseException) -> bool:
    """Whether ``err`` is PyTorch's word that a DataLoader worker process died (killed by the out-of-memory killer
    or by hand, or exited)."""
    return isinstance(err, RuntimeError) and "DataLoader worker (pid" in str(err)


# What a process's collective says when another process of the run died (gloo on the CPU, NCCL on GPUs).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing", "Broken pipe",
             "remote process exited", "NCCL communicator was aborted")


def peer_failed(err: BaseException, world_size: int) -> bool:
    """Whether ``err`` is a collective's failure in a run of several processes: what the others meet when one of
    them stops on an error of its own (a bad file, out of memory, a kill)."""
    return world_size > 1 and isinstance(err, RuntimeError) and any(w in str(err) for w in PEER_LOST)


def peer_death(resume: str) -> TrainingError:
    """The one-line error of a process whose run lost another process; ``resume``: what the user can go on from."""
    return TrainingError("another process of this multi-process run stopped, so this one cannot go on: that "
                         "process's own error is in the run's console output or job log, above this line (log.txt "
                         f"is written by the first process alone): fix that cause. {resume}")


def daemon_children() -> set[int]:
    """The pids of this process's daemonic children (DataLoader workers among them; a user's Pool workers too)."""
    import multiprocessing

    return {c.pid for c in multiprocessing.active_children() if c.daemon and c.pid is not None}


def end_loader_workers(before: set[int]) -> None:
    """Kill the DataLoader workers still alive after one died: the daemonic children started since ``before``
    (:func:`daemon_children` as the training began; a notebook's own Pool workers are spared). They ignore SIGTERM
    (:func:`geomed_ssl.train.checkpointing.stop_safe_worker_init`), so the exit's join of a survivor could wait
    forever."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon and child.pid not in before:
            child.kill()
            child.join(timeout=5)


def worker_death(err: BaseException, resume: str, before: set[int]) -> TrainingError:
    """The one-line error of a run whose data worker died (its workers, the daemonic children started since
    ``before``, ended): ``err``'s reason, and ``resume``, what the user can go on from."""
    end_loader_workers(before)
    reason = str(err).strip().rstrip(".").replace("DataLoader worker", "a data-loading worker")
    return TrainingError(f"{reason} (out of memory? `dmesg` says). {resume} Short of memory, lower "
                         "data.num_workers or train.batch_size.")


def forks(strategy: str, devices: Any = 1) -> bool:
    """``strategy`` starts its processes by forking this one: Lightning's ddp_fork / ddp_notebook and variants, and
    ``auto`` on more than one device in an interactive session (Jupyter, IPython), where Lightning picks
    ddp_fork."""
    if str(strategy).startswith(("ddp_fork", "ddp_notebook")):
        return True
    from lightning.fabric.utilities import imports

    return str(strategy) == "auto" and bool(imports._IS_INTERACTIVE) and _several(devices)


def _several(devices: Any) -> bool:
    """``devices`` (Lightning's flag) asks for more than one device (``auto`` in an interactive session: one)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) > 1
    try:
        count = int(text)
    except ValueError:
        return False
    return count == -1 or count > 1


PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true"}


def resolve_precision(precision: str, accelerator: str, strategy: str = "auto", devices: Any = 1) -> str:
    """``auto``: 32-bit on CPU (bf16 autocast is slower there), bf16-mixed on GPUs that support it, else 16-mixed.

    Nothing here initialises CUDA in this process (``torch.cuda.is_available`` asks NVML under Lightning), except
    the bf16 question, which must ask the GPU: with a forking strategy that would break the forked workers
    ("Cannot re-initialize CUDA in forked subprocess"), so there ``auto`` on a GPU is refused in one line."""
    precision = PRECISION_ALIASES.get(str(precision), precision)  # Lightning's short names warn of their history
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    mps = accelerator in ("auto", "gpu", "mps") and torch.backends.mps.is_available()  # float16 autocast works there
    if precision == "16-mixed" and not (on_gpu or mps):  # Lightning would switch to bf16, warning twice
        if "cpu16" not in _SAID:
            log.info("train.precision %s: float16 autocast needs a GPU; on the CPU this run uses bf16-mixed.",
                     precision)
            _SAID.add("cpu16")
        return "bf16-mixed"
    if precision != "auto":
        return precision
    if not on_gpu:
        return "32-true"
    if forks(strategy, devices):
        how = " (in a notebook Lightning runs several devices by forking)" if str(strategy) == "auto" else ""
        raise ConfigError(f"train.precision=auto with train.strategy={strategy} on GPUs{how}: finding out whether "
                          "they support bf16 would initialise CUDA before the processes fork; set train.precision="
                          "bf16-mixed (Ampere or newer GPUs) or 16-mixed, or run it as a script with "
                          "train.strategy=ddp.")
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def probe_trainer(accelerator: str, devices: Any, strategy: str, num_nodes: int, precision: str) -> L.Trainer:
    """A Trainer built with every launch and precision setting that Lightning can refuse (an unknown strategy, an
    accelerator that is absent, a precision whose package is missing: ``transformer-engine``, ``tpu``'s
    torch_xla), and nothing else, so a bad value is one ``ConfigError`` before any folder is made. Only ``auto``
    and Lightning's DDP strategies are accepted: others (deepspeed, fsdp) write checkpoints from every rank,
    around the atomic rank-0 writes this toolkit's promises rest on."""
    if not (str(strategy) == "auto" or str(strategy).startswith("ddp")):
        raise ConfigError(f"train.strategy '{strategy}' is not supported: checkpoints and exports are written by "
                          "rank 0 alone, as Lightning's DDP strategies do; use auto, ddp, ddp_spawn or ddp_fork.")
    resolved = resolve_precision(precision, accelerator, strategy, devices)
    quiet_lightning()  # this may be the process's first Trainer: no GPU/TPU banners or tips (they printed twice)
    try:
        return L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
                         precision=resolved, logger=False, plugins=cluster_plugins(),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        raise ConfigError(f"train.accelerator / devices / strategy / num_nodes / precision ({accelerator} / "
                          f"{devices} / {strategy} / {num_nodes} / {precision}): {str(err).splitlines()[0]}"
                          ) from None


def build_trainer(t: Any, out: Path, cbs: list[L.Callback]) -> L.Trainer:
    """The Lightning trainer of a run: the recipe's accelerator, devices, strategy, nodes, precision, steps and
    clipping; checkpoints are written by our callbacks (``RunCheckpoints``, atomic), the data is sampled by ours.
    Under a container's CPU quota, this node's training processes share it (:func:`fit_threads_to_quota`)."""
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator, t.strategy, t.devices), max_steps=t.max_steps,
        max_epochs=-1,
        gradient_clip_val=t.grad_clip, accumulate_grad_batches=t.accumulate_grad_batches, callbacks=cbs,
        logger=tensorboard_logger(out), log_every_n_steps=min(t.log_every, t.max_steps),
        enable_progress_bar=has_bar(cbs), enable_checkpointing=False, enable_model_summary=False,
        default_root_dir=str(out), num_sanity_val_steps=0, use_distributed_sampler=False, deterministic=False,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )
    if (threads := fit_threads_to_quota(trainer.num_devices)) is not None and trainer.is_global_zero:
        log.info(f"torch threads set to {threads} per process: the CPUs this node may use, shared by "
                 f"{trainer.num_devices} training process(es).")
    from lightning.pytorch.accelerators import CPUAccelerator

    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > (cpus := usable_cpus()):
        if trainer.is_global_zero:
            log.warning(f"warning: train.devices {trainer.num_devices} CPU processes on {cpus} CPUs take turns on the "
                        f"cores, so each step is slower than with {cpus} or fewer.")
    return trainer


def cluster_plugins() -> list[Any]:
    """The cluster environment under Slurm (elsewhere Lightning's own choice). srun's tasks of a multi-process launch
    (``launch.launched``): Lightning's Slurm environment without its auto-requeue, which on the advance-warning
    signal writes an ``hpc_ckpt_N.ckpt`` into the run folder (the working directory for fine-tunes) and requeues a
    command that cannot resume from it; pretraining treats that signal as a stop instead (``last.ckpt`` saved, exit
    128 + 10 on Linux), resubmit with ``--resume``. A process that runs alone (an sbatch script's, whatever its
    ``--ntasks``, or rank 0 of a one-process command after the other ranks left): Lightning's plain environment, where
    Slurm's would refuse ``--ntasks`` > 1 or count the other tasks. A torchrun launch inside a Slurm job keeps
    Lightning's choice (torchrun's environment, which Lightning prefers to Slurm's)."""
    from lightning.pytorch.plugins.environments import (LightningEnvironment, SLURMEnvironment,
                                                        TorchElasticEnvironment)

    from geomed_ssl.launch import launched

    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return []
    if launched() is None:
        return [LightningEnvironment()]
    return [SLURMEnvironment(auto_requeue=False)]


def tensorboard_logger(out: Path) -> Any:
    """TensorBoard events in ``out/tensorboard`` when tensorboard is installed, else no logger."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return L.pytorch.loggers.TensorBoardLogger(str(out), name="tensorboard", version="")
