"""``pretrain``: a folder of unlabeled files + a recipe → a run folder with checkpoints and an encoder export."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from torch.utils.data import DataLoader, Sampler

from geomed_ssl.config import Recipe, as_tuple, spatial_dims
from geomed_ssl.data.catalog import Catalog, scan
from geomed_ssl.views.datasets import PretrainDataset, collate
from geomed_ssl.data.stats import BandStats, compute_stats
from geomed_ssl.data.survey import check_fillable, warn_survey
from geomed_ssl.views.builder import build_views
from geomed_ssl.errors import ConfigError, GeomedError, RunStopped
from geomed_ssl.files.listing import inputs_digest
from geomed_ssl.launch import check_master_port, check_node_rank, check_pretrain_world, further_rank, launched
from geomed_ssl.methods import build_method, with_method_settings
from geomed_ssl.methods.schedules import ScheduleClock
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.models.model_data import training_scale
from geomed_ssl.outcommands import COMMANDS
from geomed_ssl.outdirs import Inputs, check_out_dir, check_writable, prepare_out_dir
from geomed_ssl.process import keeps_process_state
from geomed_ssl.ranks import Agreement, agreement_for, end_other_ranks, start_other_ranks, watch_other_ranks
from geomed_ssl.train.run_callbacks import knn_monitor, run_callbacks
from geomed_ssl.train.checkpointing import (ResumePoint, StopRequest, find_resume_checkpoint, read_checkpoint_info,
                                            remove_stale_temp_files, stop_safe_worker_init)
from geomed_ssl.train.console import quiet_lightning
from geomed_ssl.config.lr_check import warn_accumulation, warn_schedule
from geomed_ssl.train.module import PretrainModule
from geomed_ssl.train.resuming import (refuse_misfit, resolve_recipe, resume_point, resumed_clock,
                                       warn_changed_settings)
from geomed_ssl.train.run_log import attach_run_log, keeps_run_log, say_in_run_log
from geomed_ssl.train.run_files import resumed_stats, warn_data_changed, write_run_files
from geomed_ssl.train.trainer import (build_trainer, daemon_children, forks, loader_workers, probe_trainer,
                                      peer_death, peer_failed, worker_death, worker_died)

log = logging.getLogger("geomed_ssl")


@dataclass
class RunResult:
    """What a pretraining run produced."""

    run_dir: Path
    encoder_dir: Path
    steps: int
    catalog: Catalog = field(repr=False)  # every file read: too long to print
    stopped: str | None = None  # SIGTERM / SIGINT (or "stopped") when the run ended before train.max_steps
    is_global_zero: bool = True  # False in the other processes of a multi-process run


class StepOffsetSampler(Sampler[int]):
    """Indices of a stream that starts at the trainer's current step, so a resumed run reads the batches it missed.

    Micro-batch ``m`` of rank ``r`` takes indices ``(m * world + r) * batch + [0, batch)``; the dataset maps each
    index to a sample deterministically.
    """

    def __init__(self, batch_size: int, total_micro_batches: int, start: Callable[[], int], rank: int = 0,
                 world: int = 1):
        self.batch_size, self.total = batch_size, total_micro_batches
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        for m in range(self.start(), self.total):
            base = (m * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return self.total * self.batch_size


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, inputs: Inputs | None = None,
                    create: bool = True) -> None:
    """RUN_DIR under the output-folder rule (:mod:`geomed_ssl.outdirs`): ``--resume`` continues a run of ours
    (:func:`find_resume_checkpoint` checks it has a readable checkpoint), ``--overwrite`` replaces one, anything else
    must be new or empty; ``create=False`` only checks (nothing is written). Any rank may check (every rank does, on
    ``--resume``, before reading the run's config.yaml); only global rank 0 creates or replaces."""
    if resume and overwrite:
        raise GeomedError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
    kwargs = {"command": "pretrain", "inputs": inputs, "overwrite": overwrite, "resume": resume}
    check_out_dir(out, **kwargs)
    if resume:  # a resumed run writes into its subfolders too: one it cannot write is said now, not at the first save
        for sub in COMMANDS["pretrain"].inside:  # checkpoints/, encoder/, previews/, tensorboard/
            if (out / sub).is_dir() and not (out / sub).is_symlink():
                check_writable(out / sub)
    if create:
        prepare_out_dir(out, **kwargs)


def process_rank(t: Any) -> L.Trainer:
    """A probe Trainer with the recipe's devices / strategy / nodes / precision, which knows this process's global
    rank and the world size from the launch environment before anything is written: with ``strategy=ddp``
    Lightning runs the same command again for the other ranks, and only rank 0 may create, check or delete
    folders. Every Trainer setting that can fail is tried here (:func:`probe_trainer`)."""
    check_master_port()
    probe = probe_trainer(t.accelerator, t.devices, t.strategy, t.num_nodes, t.precision)
    # torchrun / srun started N: the recipe must train N (its devices x nodes: a ddp strategy's world size is the
    # launcher's), with a strategy that starts no workers of its own
    check_pretrain_world(probe.num_devices * probe.num_nodes, t.strategy)
    check_node_rank(probe.global_rank, probe.world_size, probe.num_nodes)
    cluster = getattr(probe.strategy, "cluster_environment", None)
    if cluster is not None and launched() is not None:  # srun's tasks per node and nodes (Lightning's check at fit)
        try:
            cluster.validate_settings(num_devices=probe.num_devices, num_nodes=probe.num_nodes)
        except ValueError as err:
            raise ConfigError(f"train.devices x train.num_nodes = {probe.num_devices} x {probe.num_nodes} does not "
                              f"fit the launch: {str(err).splitlines()[0]} (train.devices is the processes per node, "
                              "train.num_nodes the nodes).") from None
    return probe


def rank_failed_alone(err: GeomedError) -> GeomedError:
    """``err`` as a rank other than 0 of a torchrun / srun launch says it: it fails before the ranks can tell
    each other (the run's recipe, which says how they connect, is what it could not read), so the others wait for
    the process group until its timeout; say that, and the likely cause."""
    found = launched()
    if found is None or found.rank == 0:
        return err
    return GeomedError(f"rank {found.rank} of {found.world}: {err} Every rank must see the run folder on shared "
                       "storage; the other ranks wait for this one until the process group times out (30 min): "
                       "stop them.")


def fit_device(probe: L.Trainer, strategy: str, devices: Any = 1) -> torch.device:
    """Where a method fits what it learns from the data before training: this rank's device, except the CPU under
    a forking strategy (CUDA started before the fork would break the forked workers)."""
    device = probe.strategy.root_device
    return torch.device("cpu") if forks(strategy, devices) else device


def fit_method_to_data(recipe: Recipe, catalog: Catalog, source: str, resume: bool, world: int = 1) -> Recipe:
    """The recipe with the method's data-dependent sizes checked against, and ``auto`` ones fitted to, the distinct
    windows of the scanned data and a step of ``world`` processes (each fitted value logged, and recorded in
    config.yaml)."""
    nd = spatial_dims(recipe.data)
    window = as_tuple(recipe.data.patch_size, nd, "data.patch_size")
    samples = catalog.distinct_windows(window, recipe.data.spacing if nd == 3 else None)
    return with_method_settings(recipe, source, saved=resume, samples=samples, world=world)


def agreed_inputs(probe: L.Trainer, out: Path, data_dir: str | Path, recipe: Recipe, inputs: Inputs, *, resume: bool,
                  overwrite: bool, strict: bool, source: str, started: Sequence[Any] = ()
                  ) -> tuple[Agreement, ResumePoint | None, Catalog, BandStats, Recipe]:
    """What can fail before rank 0 writes, checked by every rank, which agree on it (:mod:`geomed_ssl.ranks`):
    rank 0 checks ``--out`` and picks the checkpoint to resume from, then every rank reads that
    checkpoint, the data, its statistics and fits the method's data-dependent sizes (the recipe returned). A
    failure on any rank stops every rank with its message. The agreement is returned for the rounds that follow
    (:meth:`Agreement.round`: the further checks of every rank, then rank 0 making and writing the run folder);
    ``started``: the ranks this process started (:func:`start_other_ranks`)."""
    agreement = agreement_for(probe, started)
    rank = probe.global_rank
    with agreement.told():  # rank 0 refuses a used or forbidden --out (changing nothing), picks the checkpoint
        if rank == 0:
            prepare_run_dir(out, resume, overwrite, inputs, create=False)
        found = find_resume_checkpoint(out, announce=True) if resume and rank == 0 else None
    chosen = agreement.share_checkpoint(str(found.path) if found else None)
    with agreement.round(last=False):
        point = found or (resume_point(Path(chosen)) if chosen else None)
        catalog, stats, recipe = read_data(data_dir, out, recipe, resume, strict, source, point, probe.world_size)
        files = [p for r in catalog.records for p in r.paths or [r.path]]
        agreement.same_inputs(inputs_digest(recipe.to_dict(), files))  # none changed while the ranks started
    return agreement, point, catalog, stats, recipe


def read_data(data_dir: str | Path, out: Path, recipe: Recipe, resume: bool, strict: bool, source: str,
              point: ResumePoint | None = None, world: int = 1) -> tuple[Catalog, BandStats, Recipe]:
    """The catalog of ``data_dir`` (summarised in the log), the band statistics (a resumed run's: those its
    checkpoint ``point`` trained with, :func:`resumed_stats`; else computed, seeded: every rank computes the same
    ones, none waits for another's file) and the recipe with the method fitted to the data and a step of ``world``
    processes (:func:`fit_method_to_data`)."""
    catalog = scan(data_dir, recipe.data, strict=strict, names_by_position="error" if strict else "warn")
    log.info(catalog.summary())
    catalog.warn_problems()  # a warning line, shown under --quiet too (the summary is not)
    warn_survey(catalog, recipe.data.spacing,
                int(recipe.method.settings.get("axis", 0)) if recipe.method.name == "rotation" else None,
                window=recipe.data.patch_size, tokens=recipe.model.patch_size, intensity=recipe.data.intensity)
    check_fillable(catalog, as_tuple(recipe.data.patch_size, spatial_dims(recipe.data), "data.patch_size"),
                   recipe.data.min_valid_fraction, recipe.data.spacing)
    recipe = fit_method_to_data(recipe, catalog, source, resume, world)
    if resume:
        stats = resumed_stats(out, point, catalog)  # data with other bands refused before a word on what changed
        warn_data_changed(out, catalog, point)
        if stats is not None:
            return catalog, stats, recipe
        if (out / "stats.json").is_file():  # a checkpoint of before the statistics were kept in it
            return catalog, BandStats.load(out / "stats.json"), recipe
    return catalog, compute_stats(catalog, recipe.data, seed=recipe.train.seed), recipe


class PretrainData(L.LightningDataModule):
    """The pretraining batches, built inside each training process (where the trainer knows its rank): micro-batch
    ``m`` of rank ``r`` reads samples ``(m * world + r) * batch`` onwards, from the resumed step on."""

    def __init__(self, dataset: PretrainDataset, batch_size: int, micro_batches: int, accumulate: int,
                 num_workers: int):
        super().__init__()
        self.dataset, self.batch_size, self.micro_batches = dataset, batch_size, micro_batches
        self.accumulate, self.num_workers = accumulate, num_workers

    def start(self) -> int:
        return self.trainer.global_step * self.accumulate

    def train_dataloader(self) -> DataLoader:
        sampler = StepOffsetSampler(self.batch_size, self.micro_batches, start=self.start,
                                    rank=self.trainer.global_rank, world=self.trainer.world_size)
        workers = loader_workers(self.num_workers)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate, persistent_workers=workers > 0, drop_last=True,
                          pin_memory=torch.cuda.is_available(),
                          worker_init_fn=functools.partial(stop_safe_worker_init, rank=self.trainer.global_rank))


@keeps_process_state
@keeps_run_log
def pretrain(recipe: Recipe | str | Path | None, data_dir: str | Path, out_dir: str | Path, *,
             overrides: list[str] | None = None, resume: bool = False, overwrite: bool = False, strict: bool = False,
             callbacks: list[L.Callback] | None = None, progress: bool = True) -> RunResult:
    """Pretrain an encoder on the files under ``data_dir`` without labels; see ``docs/cli.md`` for the outputs.

    Under DDP every rank runs this function; only global rank 0 writes. Everything that can fail on the inputs is
    checked before the run folder is created, changed or deleted."""
    out = Path(out_dir)
    quiet_lightning()
    if further_rank():  # rank 0 says the notes on the recipe and the data, the same on every rank; from Python too,
        log.setLevel(logging.ERROR)  # where no CLI quietened this rank first (the level comes back on return)
    recipe_file = None if isinstance(recipe, Recipe) or resume else recipe
    try:
        if resume:  # a folder that is not a run of ours is refused before its config.yaml is looked for (any rank)
            prepare_run_dir(out, resume, overwrite, {"data folder": data_dir}, create=False)
        recipe = resolve_recipe(recipe, out, overrides, resume)
    except GeomedError as err:
        if resume and not (out / "config.yaml").is_file():  # this rank cannot see the run (its config.yaml)
            raise rank_failed_alone(err) from None
        raise
    t = recipe.train
    probe = process_rank(t)
    rank, world = probe.global_rank, probe.world_size
    if rank != 0:
        log.setLevel(logging.ERROR)  # the other ranks' notes and warnings repeat rank 0's
    inputs: dict[str, Any] = {"data folder": data_dir, "recipe": recipe_file,
                              "kNN labels folder": recipe.data.val_labels}
    children = start_other_ranks(  # Lightning's ddp: its other ranks check at once with this one, --out checked first
        probe, lambda: prepare_run_dir(out, resume, overwrite, inputs, create=False) if rank == 0 else None)
    agreement, point, catalog, stats, recipe = agreed_inputs(
        probe, out, data_dir, recipe, inputs, resume=resume, overwrite=overwrite, strict=strict,
        source=str(out / "config.yaml") if resume else str(recipe_file or "recipe"), started=children)
    with agreement.round(last=False):  # every rank's checks on the data, before rank 0 changes RUN_DIR
        clock = resumed_clock(point, t.max_steps, t.min_lr, t.warmup_steps) if point else ScheduleClock(t.max_steps)

        L.seed_everything(t.seed, workers=True, verbose=False)
        enc_cfg = EncoderConfig.from_recipe(recipe.model, recipe.data, len(catalog.band_names), catalog.band_names,
                                            catalog.wavelengths, stats.to_dict(), bandwidths=catalog.bandwidths,
                                            scale=training_scale(catalog.records, recipe.data.spacing))
        method = build_method(recipe.method, enc_cfg, clock.total)
        changes: list[str] = []
        if point is not None:  # before anything in the run folder changes (config.yaml with this resume's --set values)
            changes = refuse_misfit(point.path, method, recipe, overrides)
        view = build_views(method.views, recipe.data, spatial_dims(recipe.data), recipe.augment,
                           patch_size=recipe.model.patch_size, wavelengths=catalog.wavelengths)
        dataset = PretrainDataset(catalog, stats, recipe.data, view, seed=t.seed)
        if (note := dataset.pairing_note()) is not None:
            (log.warning if note.startswith("warning") else log.info)(note)
        if point is None:  # a resumed run gets what was fitted back from its checkpoint
            for note in method.fit_to_data(dataset, t.seed, fit_device(probe, t.strategy, t.devices)):
                log.info(note)
        knn = knn_monitor(recipe, stats, enc_cfg)  # its folder read (and refused) before RUN_DIR is made
    with agreement.round():  # rank 0 making RUN_DIR: a failure there (locked, disk full) stops every rank
        if rank == 0:
            prepare_run_dir(out, resume, overwrite, inputs)
            remove_stale_temp_files(out)
            until = point.info.get("recipe") if point is not None and changes else None
            write_run_files(out, recipe, catalog, stats, point.step if point is not None else None, until)
            if until is not None:  # said once the file it names is written
                warn_changed_settings(point, changes)
            attach_run_log(out, point.step if point is not None else None)

    stop = StopRequest()
    try:  # the ranks this process started are not watched yet: they must not wait for it in vain
        cbs = run_callbacks(out, recipe, method, catalog, stats, enc_cfg, stop, progress, knn) + (callbacks or [])
        trainer = build_trainer(t, out, cbs)
    except BaseException:
        for proc in children:
            proc.kill()
        raise
    watch_other_ranks(trainer, children)
    module = PretrainModule(method, recipe, effective_batch=t.batch_size * t.accumulate_grad_batches * world,
                            extra_state={"encoder": enc_cfg.to_dict(), "method": recipe.method.name}, clock=clock)
    if rank == 0:
        warn_schedule(module.peak_lr, t.warmup_steps, t.max_steps, "train",
                      f"train.base_lr {t.base_lr:g} x effective batch {module.effective_batch} / 256", t.min_lr)
        warn_accumulation(recipe.method.name, method.compares_batch, t.batch_size, t.accumulate_grad_batches)
    data = PretrainData(dataset, t.batch_size, t.max_steps * t.accumulate_grad_batches, t.accumulate_grad_batches,
                        recipe.data.num_workers)
    steps = fit(trainer, module, data, point, stop, out)
    end_other_ranks(children)
    stopped = stopped_reason(steps, t.max_steps, stop)
    say_in_run_log(f"stopped at step {steps} ({stopped}); checkpoint saved" if stopped else f"done: {steps} steps")
    return RunResult(run_dir=out, encoder_dir=out / "encoder", steps=steps, catalog=catalog, stopped=stopped,
                     is_global_zero=rank == 0)


@contextlib.contextmanager
def launcher_scratch(spawned: bool) -> Iterator[None]:
    """Inside, with ``spawned`` (ddp_spawn / ddp_fork), temporary files go to a folder of ours, removed after:
    Lightning's spawning launcher hands the final weights to this process through a new folder of the temp dir that
    it never removes (one empty ``tmpXXXX`` folder a run), and this process never uses them."""
    if not spawned:
        yield
        return
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="geomed-ssl-launch-")
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = folder  # spawned workers read the variable, forked ones the module
    try:
        yield
    finally:
        tempfile.tempdir = before[1]
        if before[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before[0]
        shutil.rmtree(folder, ignore_errors=True)


def stopped_reason(steps: int, max_steps: int, stop: StopRequest) -> str | None:
    """Why a run ended before ``max_steps`` (the signal's name, else "stopped"); None when it reached them, even
    if a signal came after its last step."""
    return (stop.name or "stopped") if steps < max_steps else None


def fit(trainer: L.Trainer, module: PretrainModule, data: PretrainData, point: ResumePoint | None,
        stop: StopRequest, out: Path) -> int:
    """Train (from ``point`` when resuming); the optimiser steps done."""
    launcher = trainer.strategy.launcher
    spawned = isinstance(launcher, _MultiProcessingLauncher)
    if spawned:  # this process only waits for the workers: a signal is passed on to them, which save and stop
        stop.announce = False  # the workers' rank 0 says what happens
        stop.forward_to(launcher.kill)
        stop.install()
    children = daemon_children()
    try:
        with launcher_scratch(spawned):
            trainer.fit(module, datamodule=data, ckpt_path=str(point.path) if point else None, weights_only=True)
    except SystemExit as exc:  # Lightning ends a KeyboardInterrupt (a second Ctrl-C: abort without saving) with
        from lightning.pytorch.utilities.exceptions import SIGTERMException  # exit(1), a SIGTERM it heard itself

        last = out / "checkpoints" / "last.ckpt"
        kept = (f"'{last}' keeps the last checkpoint saved: the same command with --resume goes on from it"
                if last.is_file() else "no checkpoint was saved yet: start again with --overwrite")
        if isinstance(exc, SIGTERMException) and not stop.aborted:  # Lightning heard it before the run's own stop
            name = stop.name or "SIGTERM"  # (a Ctrl-C the run's stop heard after it)
            raise RunStopped(name, f"pretraining stopped by {name} as it started; {kept}.") from None
        if stop.requested and not stop.aborted:  # a second Ctrl-C after the stop had saved and put Python's
            # handler back (on_train_end): Lightning turned it into exit(1)
            raise RunStopped(stop.name, f"pretraining stopped by {stop.name}, and a second Ctrl-C came as it "
                             f"ended; {kept}.") from None
        if not stop.aborted:
            raise
        at = "" if spawned else f" at step {trainer.global_step}"  # the launching process never steps
        raise RunStopped("SIGINT", f"pretraining aborted by a second Ctrl-C{at}, without saving; {kept}.") from None
    except RuntimeError as err:
        last = out / "checkpoints" / "last.ckpt"
        resume = (f"'{last}' keeps the last checkpoint saved: the same command with --resume goes on from it."
                  if last.is_file() else "No checkpoint was saved yet.")
        if worker_died(err):
            raise worker_death(err, resume, children) from None
        if peer_failed(err, trainer.world_size):
            raise peer_death(resume) from None
        raise
    finally:
        stop.restore()
        data.dataset.close()  # its open files: a notebook's next run would find them still open
    if spawned:  # the workers trained: the step is in their last checkpoint
        return read_checkpoint_info(out / "checkpoints" / "last.ckpt")[0]
    return trainer.global_step
