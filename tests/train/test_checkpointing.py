"""Checkpoints survive kills and full disks: atomic writes, resume from the newest readable checkpoint, a save on
SIGTERM / SIGINT, schedules that continue smoothly when a run is resumed with more steps, and what the console shows."""

from __future__ import annotations

import csv
import errno
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.outfiles import atomic_write
from geomed_ssl.train.checkpointing import StopRequest, atomic_save, remove_stale_temp_files
from geomed_ssl.train.pretrain import pretrain
from tests.conftest import TINY, TINY_BASE, KillAt

OVERRIDES = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=10", "train.checkpoint_every=5"]


def rows(run_dir: Path) -> dict[int, dict[str, float]]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): {k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)}


def test_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, path)

    def disk_full(f) -> None:
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, disk_full)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoint_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_save({"step": 1}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644


def test_names_that_only_look_temporary_are_never_removed(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    theirs = [tmp_path / "checkpoints" / "notes.tmp", tmp_path / ".hidden", tmp_path / "checkpoints" / "last.ckpt",
              tmp_path / "checkpoints" / "mine.ckpt.tmp", tmp_path / "checkpoints" / ".best.ckpt.old",
              tmp_path / ".config.yaml.original", tmp_path / "metrics.csv.tmp"]
    for p in theirs:
        p.write_bytes(b"x")
    (tmp_path / ".checkpoints.20240101").mkdir()  # a user's dated backup folder
    assert remove_stale_temp_files(tmp_path) == []
    assert all(p.exists() for p in theirs) and (tmp_path / ".checkpoints.20240101").is_dir()


def test_partial_checkpoints_of_a_killed_process_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "checkpoints").mkdir()
    from geomed_ssl.outfiles import host_tag, partial_path

    (tmp_path / "previews").mkdir()
    stale = [tmp_path / "checkpoints" / f".partial-{int(dead.stdout)}.{host_tag()}-last.ckpt",
             tmp_path / f".partial-{int(dead.stdout)}.{host_tag()}-metrics.csv",
             tmp_path / "previews" / f".partial-{int(dead.stdout)}.{host_tag()}-step-000020.png"]
    live = partial_path(tmp_path / "checkpoints" / "step-000005.ckpt")  # a save in progress
    for p in [*stale, live]:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert live.exists()


def killed_at_step_7(raster_dir: Path, run: Path) -> Path:
    """A run of OVERRIDES stopped by a simulated kill before step 7 (its last checkpoint: step 5)."""
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, run, overrides=OVERRIDES, progress=False,
                 callbacks=[KillAt(7)])
    return run


def test_resume_skips_a_truncated_newest_checkpoint_and_replays_exactly(raster_dir: Path, tmp_path: Path,
                                                                        caplog) -> None:
    full = tmp_path / "full"
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, full, overrides=OVERRIDES, progress=False)
    broken = killed_at_step_7(raster_dir, tmp_path / "broken")
    last = broken / "checkpoints" / "last.ckpt"  # step 5, as step-000005.ckpt
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[: len(data) // 2])  # what a copy killed halfway left before this version
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        resumed = pretrain(None, raster_dir, broken, resume=True, progress=False)
    assert "skipping last.ckpt: truncated or damaged" in caplog.text and "step-000005.ckpt (step 5)" in caplog.text
    assert resumed.steps == 10
    a, b = rows(full), rows(broken)
    np.testing.assert_allclose([b[s]["loss"] for s in range(6, 11)], [a[s]["loss"] for s in range(6, 11)], atol=1e-5)


def fake_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step, "geomed_ssl": {"method": "mae"}}, path)
    return path


def test_resume_takes_the_checkpoint_with_the_highest_step_even_when_last_ckpt_is_older(tmp_path: Path,
                                                                                       caplog) -> None:
    from geomed_ssl.train.checkpointing import find_resume_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    fake_checkpoint(ckpts / "step-000005.ckpt", 5)
    fake_checkpoint(ckpts / "last.ckpt", 5)
    fake_checkpoint(ckpts / "step-000010.ckpt", 10)  # killed before last.ckpt was linked to it
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        point = find_resume_checkpoint(tmp_path / "run")
    assert point.path.name == "step-000010.ckpt" and point.step == 10
    assert "step-000010.ckpt (step 10) is further than last.ckpt" in caplog.text


def test_resume_prefers_last_ckpt_when_it_is_at_least_as_far(tmp_path: Path) -> None:
    from geomed_ssl.train.checkpointing import find_resume_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    fake_checkpoint(ckpts / "step-000010.ckpt", 10)
    fake_checkpoint(ckpts / "last.ckpt", 10)
    assert find_resume_checkpoint(tmp_path / "run").path.name == "last.ckpt"
    fake_checkpoint(ckpts / "last.ckpt", 13)  # a timed or SIGTERM save after step 10
    assert find_resume_checkpoint(tmp_path / "run").step == 13


def test_linking_last_ckpt_syncs_its_folder(tmp_path: Path, monkeypatch) -> None:
    import geomed_ssl.outfiles as outfiles

    synced: list[Path] = []
    monkeypatch.setattr(outfiles, "fsync_dir", synced.append)
    step = fake_checkpoint(tmp_path / "step-000005.ckpt", 5)
    outfiles.replace_with_copy(step, tmp_path / "last.ckpt")
    assert os.path.samefile(step, tmp_path / "last.ckpt") and synced == [tmp_path]


class SendSignal(L.Callback):
    """Sends ``signum`` to this process after optimiser step ``step``, as a cluster scheduler would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_saves_a_checkpoint_stops_and_the_run_resumes(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [*OVERRIDES, "train.checkpoint_every=1000"]  # the only checkpoint is the one the signal causes
    before = signal.getsignal(signal.SIGTERM)
    stopped = pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=overrides, progress=False,
                       callbacks=[SendSignal(3, signal.SIGTERM)])
    assert stopped.stopped == "SIGTERM" and stopped.steps == 4  # saved at the next step boundary
    assert signal.getsignal(signal.SIGTERM) == before
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4
    resumed = pretrain(None, raster_dir, out, resume=True, progress=False)
    assert resumed.steps == 10 and resumed.stopped is None and sorted(rows(out)) == list(range(1, 11))


class SignalGroup(SendSignal):
    """SIGTERM to this process and its DataLoader workers, as `timeout` or Slurm signal a whole process group."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            workers = multiprocessing.active_children()
            assert workers  # the test needs data.num_workers > 0
            for worker in workers:
                os.kill(worker.pid, self.signum)
            os.kill(os.getpid(), self.signum)


def test_sigterm_to_the_process_group_still_saves_the_stop_checkpoint(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [*OVERRIDES, "train.checkpoint_every=1000", "data.num_workers=1"]
    stopped = pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=overrides, progress=False,
                       callbacks=[SignalGroup(3, signal.SIGTERM)])
    assert stopped.stopped == "SIGTERM" and stopped.steps == 4
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4


def test_a_second_ctrl_c_aborts_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite was started in the background by a shell
    stop = StopRequest()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_launching_process_passes_each_signal_on_to_its_workers_as_a_stop() -> None:
    stop, sent = StopRequest(), []
    stop.announce = False
    stop.forward_to(sent.append)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C after a SIGTERM is no abort: still one stop
        assert sent == [signal.SIGTERM, signal.SIGTERM] and stop.name == "SIGTERM"
    finally:
        stop.restore()


def test_a_forked_worker_never_forwards_the_signals_it_inherits() -> None:
    stop, sent = StopRequest(), []
    stop.announce = False
    stop.forward_to(sent.append)
    stop.install()
    try:
        pid = os.fork()
        if pid == 0:  # the worker: its copy of the handler only sets the flag
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(10 + len(sent) if stop.requested else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        stop.restore()
    assert os.waitstatus_to_exitcode(status) == 10 and sent == [] and not stop.requested


def test_a_run_that_reached_max_steps_is_not_reported_stopped_whatever_signal_came() -> None:
    from geomed_ssl.train.pretrain import stopped_reason

    stop = StopRequest()
    stop.signum = signal.SIGTERM  # arrived after the last step: the workers had finished
    assert stopped_reason(10, 10, stop) is None
    assert stopped_reason(7, 10, stop) == "SIGTERM" and stopped_reason(7, 10, StopRequest()) == "stopped"


def test_lr_continues_without_a_jump_when_resumed_with_more_steps(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=OVERRIDES, progress=False,
                 callbacks=[KillAt(6)])
    pretrain(None, raster_dir, out, resume=True, progress=False, overrides=["train.max_steps=30"])
    lr = [rows(out)[s]["lr"] for s in range(1, 31)]  # the lr of each update
    steps = np.abs(np.diff(lr))
    assert steps[5:].max() <= steps[:5].max()  # no change after the resume is larger than a warmup step's
    assert np.all(np.diff(lr[5:]) <= 1e-12) and lr[-1] < 0.01 * max(lr)  # cosine down to min_lr at the new end
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert ckpt["geomed_ssl"]["schedule"]["end"] == 30 and ckpt["geomed_ssl"]["schedule"]["total"] == 10
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*.ckpt"))  # train.keep_checkpoints: 3
    assert kept == ["step-000020.ckpt", "step-000025.ckpt", "step-000030.ckpt"]


def test_only_the_newest_step_files_up_to_this_step_are_pruned(tmp_path: Path) -> None:
    """A later step's file (a longer run's, before a resume from an earlier step) and names of the user's stay;
    null keeps every file."""
    from geomed_ssl.train.checkpointing import prune_step_files

    for name in ["step-000010.ckpt", "step-000020.ckpt", "step-000030.ckpt", "step-000090.ckpt", "step-10.ckpt",
                 "best.ckpt", "last.ckpt"]:
        (tmp_path / name).write_bytes(b"x")
    prune_step_files(tmp_path, 30, None)
    assert len(list(tmp_path.iterdir())) == 7
    prune_step_files(tmp_path, 30, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt", "step-000030.ckpt",
                                                          "step-000090.ckpt", "step-10.ckpt"]


def test_redirected_output_has_plain_progress_lines_and_no_lightning_noise(raster_dir: Path, tmp_path: Path) -> None:
    args = ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(tmp_path / "run")]
    for item in [*OVERRIDES, "train.max_steps=4", "train.log_every=2"]:
        args += ["--set", item]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stdout and "done: 4 steps" in result.stdout
    assert "step 2/4" in result.stderr and "step 4/4" in result.stderr and "it/s" in result.stderr
    noise = [str(w.message) for w in caught if "lightning" in w.filename or "logger" in str(w.message)]
    assert not noise, noise


def test_progress_bar_writes_to_stderr(capsys) -> None:
    from geomed_ssl.train.console import StderrProgressBar

    bar = StderrProgressBar().init_train_tqdm()
    bar.total = 3
    bar.update(1)
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and "1/3" in captured.err


def test_resume_with_a_new_base_lr_trains_at_the_new_lr(raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.module import warmup_cosine

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=OVERRIDES, progress=False,
                 callbacks=[KillAt(6)])
    pretrain(None, raster_dir, out, resume=True, progress=False, overrides=["train.base_lr=0.1"])
    lr = {s: r["lr"] for s, r in rows(out).items()}

    def expected(base_lr: float, step: int) -> float:  # the lr of update ``step`` (1-based) of this 10-step run
        return base_lr * 8 / 256 * warmup_cosine(step - 1, 5, 10)

    assert [lr[s] for s in range(1, 6)] == pytest.approx([expected(0.05, s) for s in range(1, 6)], rel=1e-6)
    assert [lr[s] for s in range(6, 11)] == pytest.approx([expected(0.1, s) for s in range(6, 11)], rel=1e-6)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert ckpt["lr_schedulers"][0]["base_lrs"] == pytest.approx([0.1 * 8 / 256] * 2)


@pytest.mark.parametrize("change, named", [
    (["method.freeze_patch_embed=true"], "method.freeze_patch_embed False -> True"),
    (["method.proj_dim=8"], "method.proj_dim 16 -> 8"),
    (["model.drop_path=0.2"], "model.drop_path 0.0 -> 0.2"),  # same shapes, another network all the same
])
def test_resume_with_a_set_that_changes_the_network_is_refused_in_words_and_the_run_stays_resumable(
        raster_dir: Path, tmp_path: Path, change: list[str], named: str) -> None:
    out = tmp_path / "run"
    moco = [*TINY_BASE, "data.sensor=null", "data.patch_size=16", "data.global_crop_size=16", "train.max_steps=10",
            "train.checkpoint_every=5", "method.proj_hidden_dim=32", "method.proj_dim=16"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/moco_v3_sentinel2.yaml", raster_dir, out, overrides=moco, progress=False,
                 callbacks=[KillAt(6)])
    before = [(out / name).read_bytes() for name in ("checkpoints/last.ckpt", "config.yaml")]
    result = CliRunner().invoke(app, ["pretrain", "--resume", "--out", str(out), "--data", str(raster_dir),
                                      *[a for c in change for a in ("--set", c)], "recipes/moco_v3_sentinel2.yaml"])
    assert result.exit_code == 2, result.output
    assert "--resume: the checkpoint does not fit" in result.output and named in result.output
    assert [(out / name).read_bytes() for name in ("checkpoints/last.ckpt", "config.yaml")] == before
    assert pretrain(None, raster_dir, out, resume=True, progress=False).steps == 10


def test_a_kill_around_a_checkpoint_never_loses_that_steps_metrics_row(raster_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while step 11's row is appended, after its first character ("1", which reads as a row of step 1):
    had step 11's checkpoint been saved first, the resume would start after step 11 and its row would be missing
    for good; the cut row is dropped, not read as step 1's. Rows are appended, not the file rewritten per row."""
    from geomed_ssl.train.callbacks import MetricsCSV

    real, whole = MetricsCSV._append, []

    def dying(self: MetricsCSV, row: dict) -> None:
        if int(row["step"]) == 11:
            with self.path.open("a") as f:
                f.write("1")
            raise RuntimeError("simulated kill")
        real(self, row)

    out = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=12", "train.warmup_steps=1",
            "train.checkpoint_every=1"]
    monkeypatch.setattr(MetricsCSV, "_append", dying)
    write = MetricsCSV._write
    monkeypatch.setattr(MetricsCSV, "_write", lambda self: (whole.append(len(self.rows)), write(self)))
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=sets, progress=False)
    assert whole == [0, 1]  # written whole at the start and with the first row (its columns); rows 2-10 appended
    monkeypatch.undo()
    assert pretrain(None, raster_dir, out, resume=True, progress=False).steps == 12
    with (out / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 13))


def test_resuming_a_finished_run_says_nothing_was_trained_and_how_to_train_longer(raster_dir: Path,
                                                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=2", "train.warmup_steps=1"]
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=sets, progress=False)
    last = (out / "checkpoints" / "last.ckpt").read_bytes()
    result = CliRunner().invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--resume", "--out", str(out),
                                      "--data", str(raster_dir)])
    assert result.exit_code == 0, result.output
    assert "already finished its 2 steps" in result.output and "--set train.max_steps=N (N > 2)" in result.output
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == last
    fewer = CliRunner().invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--resume", "--out", str(out),
                                     "--data", str(raster_dir), "--set", "train.max_steps=1"])
    assert fewer.exit_code == 0, fewer.output
    assert "checkpoint is at step 2 of the 2 the run was set for, and train.max_steps is now 1" in fewer.output
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == last


def test_slurms_advance_warning_sigusr1_is_a_stop_with_a_checkpoint_and_no_hpc_checkpoint_appears(
        raster_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``#SBATCH --signal=USR1@90`` in a batch script: Lightning's auto-requeue would write hpc_ckpt_1.ckpt into the
    run folder and requeue a command that cannot resume from it; the run saves last.ckpt and stops, like on
    SIGTERM."""
    from geomed_ssl.cli import signal_exit_code

    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "pretrain.sbatch")
    out = tmp_path / "run"
    stopped = pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=[*OVERRIDES,
                       "train.checkpoint_every=1000"], progress=False, callbacks=[SendSignal(3, signal.SIGUSR1)])
    assert stopped.stopped == "SIGUSR1" and stopped.steps == 4 and signal_exit_code(stopped.stopped) == 138
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4
    assert not list(out.rglob("hpc_ckpt*")) and not list(Path.cwd().glob("hpc_ckpt*"))


SLURM_STEP = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
              "SLURM_STEP_NUM_TASKS": "2", "SLURM_NODELIST": "node1", "SLURM_JOB_NAME": "job"}
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
            "TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env,expected", [
    ({}, None),  # no Slurm: Lightning's own choice
    ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "job.sbatch"}, "LightningEnvironment"),  # the batch script: one process
    (SLURM_STEP, "SLURMEnvironment"),  # srun -n 2: its tasks are the ranks, without Lightning's requeue
    ({**SLURM_STEP, **TORCHRUN}, None),  # torchrun inside the job: Lightning's choice (torchrun's ranks)
    ({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "interactive"}, None),  # an salloc shell: not Slurm-managed
])
def test_the_cluster_environment_under_slurm(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                             expected: str | None) -> None:
    from geomed_ssl.launch import set_alone
    from geomed_ssl.train.trainer import cluster_plugins

    for key in {*SLURM_STEP, *TORCHRUN, "SLURM_JOB_NAME"}:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugins = cluster_plugins()
    assert [type(p).__name__ for p in plugins] == ([expected] if expected else [])
    if expected == "SLURMEnvironment":
        assert plugins[0].auto_requeue is False
        set_alone(True)  # rank 0 of a one-process command, the other ranks gone: Slurm's count no longer holds
        try:
            assert [type(p).__name__ for p in cluster_plugins()] == ["LightningEnvironment"]
        finally:
            set_alone(False)


def test_a_command_and_its_data_workers_outlive_slurms_advance_warning() -> None:
    """SIGUSR1's default action kills: every command ignores it (pretraining turns it into a stop while it trains,
    above), and so do the pretraining DataLoader's workers."""
    from typer.testing import CliRunner

    from geomed_ssl.cli import app
    from geomed_ssl.train.checkpointing import stop_safe_worker_init

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        assert CliRunner().invoke(app, ["methods"]).exit_code == 0
        os.kill(os.getpid(), signal.SIGUSR1)  # would end this test process
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        stop_safe_worker_init(0)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in saved)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_training_data_workers_outlive_a_signal_sent_to_the_whole_process_group() -> None:
    """``timeout``, Slurm and a terminal's Ctrl-C signal every process of the group: the training process decides
    when to stop (pretraining and fine-tuning alike); a worker that died first made its next batch a traceback."""
    import time

    import torch
    from torch.utils.data import DataLoader

    from geomed_ssl.train.checkpointing import stop_safe_worker_init

    loader = DataLoader([torch.tensor(i) for i in range(6)], batch_size=1, num_workers=1,
                        worker_init_fn=stop_safe_worker_init)
    batches = iter(loader)
    first = next(batches)
    for worker in batches._workers:
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.3)
    assert [int(first)] + [int(b) for b in batches] == list(range(6))


def written_before(run: Path, section: str, key: str) -> None:
    """The run's config.yaml as a version without ``section.key`` wrote it."""
    import yaml

    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw[section][key]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))


def test_a_run_started_before_keep_checkpoints_keeps_every_step_file_when_resumed(raster_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """Its config.yaml has no train.keep_checkpoints: resumed, it keeps all (none deleted unasked); --set prunes."""
    out = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=6", "train.checkpoint_every=2",
            "train.keep_checkpoints=null"]
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=sets, progress=False)
    written_before(out, "train", "keep_checkpoints")
    pretrain(None, raster_dir, out, resume=True, progress=False, overrides=["train.max_steps=10"])
    steps = lambda: sorted(p.name for p in (out / "checkpoints").glob("step-*.ckpt"))  # noqa: E731
    assert len(steps()) == 5
    pretrain(None, raster_dir, out, resume=True, progress=False,
             overrides=["train.max_steps=12", "train.keep_checkpoints=2"])
    assert steps() == ["step-000010.ckpt", "step-000012.ckpt"]


def test_a_volume_run_started_before_foreground_windows_goes_on_drawing_them_anywhere(volume_dir: Path,
                                                                                       tmp_path: Path) -> None:
    """Its config.yaml has no data.min_foreground_fraction: resumed, it keeps drawing windows anywhere (0), so it
    sees the batches it would have seen, with a note; a raster run's resume says nothing of it."""
    import yaml

    out = tmp_path / "run"
    sets = [*TINY, "data.patch_size=16", "train.max_steps=2", "train.batch_size=2", "train.warmup_steps=1",
            "data.min_foreground_fraction=0.0"]
    pretrain("recipes/mae_mri.yaml", volume_dir, out, overrides=sets, progress=False)
    written_before(out, "data", "min_foreground_fraction")
    result = CliRunner().invoke(app, ["pretrain", "recipes/mae_mri.yaml", "--resume", "--out", str(out), "--data",
                                      str(volume_dir), "--set", "train.max_steps=3"])
    assert result.exit_code == 0, result.output
    assert "windows were drawn anywhere" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["min_foreground_fraction"] == 0.0


def test_a_resumed_run_keeps_the_statistics_it_trained_with_and_names_the_data_that_changed(
        raster_dir: Path, tmp_path: Path, caplog) -> None:
    """stats.json edited or deleted since the start normalised the rest of the run (and its export) otherwise, and
    files added or replaced in the data folder were read without a word, catalog.json rewritten over the record
    of what the run started on."""
    import json
    import shutil

    from tests.conftest import structured_raster, write_geotiff

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=OVERRIDES, progress=False,
                 callbacks=[KillAt(6)])
    started = (out / "stats.json").read_text()
    catalog = (out / "catalog.json").read_text()
    edited = json.loads(started)
    edited["bands"][0]["mean"] *= 10
    (out / "stats.json").write_text(json.dumps(edited))
    rng = np.random.default_rng(7)
    write_geotiff(raster_dir / "scene_9.tif", structured_raster(rng, 4, 48) + 20000)  # added
    write_geotiff(raster_dir / "scene_1.tif", structured_raster(rng, 4, 48) + 20000)  # replaced
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        pretrain(None, raster_dir, out, resume=True, progress=False)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "stats.json' is not what this run trained with" in said
    assert "1 added (scene_9.tif); 1 changed (scene_1.tif) files" in said
    assert (out / "stats.json").read_text() != json.dumps(edited)
    assert json.loads((out / "stats.json").read_text()) == json.loads(started)
    exported = json.loads((out / "encoder" / "config.json").read_text())["encoder"]["stats"]
    assert exported["bands"][0]["mean"] == pytest.approx(json.loads(started)["bands"][0]["mean"])
    assert (out / "catalog.json").read_text() == catalog  # what the run started on
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "catalog-resumed-step-000005.json").is_file()
    (out / "catalog.json").unlink()  # what the run started on is unknown now: said, and never written from today's
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        pretrain(None, raster_dir, out, resume=True, progress=False, overrides=["train.max_steps=12"])
    assert "catalog.json' is missing or unreadable" in " ".join(r.getMessage() for r in caplog.records)
    assert not (out / "catalog.json").exists() and (out / "catalog-resumed-step-000010.json").is_file()
    shutil.rmtree(raster_dir)
    raster_dir.mkdir()
    for i in range(3):
        write_geotiff(raster_dir / f"scene_{i}.tif", structured_raster(rng, 3, 48))
    with pytest.raises(Exception, match=r"--resume: the data's bands \(3: .*\) are not those this run trained on "
                                        r"\(4: "):
        pretrain(None, raster_dir, out, resume=True, progress=False, overrides=["train.max_steps=14"])


def test_a_data_worker_killed_mid_run_is_one_error_and_leaves_no_worker_behind(raster_dir: Path,
                                                                                tmp_path: Path) -> None:
    """The out-of-memory killer ending a DataLoader worker gave a ~130-line traceback, and a surviving worker (which
    ignores SIGTERM) could keep the exiting process waiting forever."""
    import time

    from geomed_ssl.errors import TrainingError

    class KillWorker(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 6:
                workers = [c for c in multiprocessing.active_children() if c.daemon and c.pid not in mine]
                os.kill(workers[0].pid, signal.SIGKILL)
                time.sleep(1.0)  # PyTorch's SIGCHLD handler raises here

    out = tmp_path / "run"
    pool = multiprocessing.get_context("fork").Pool(1)  # a notebook's own daemonic workers: spared
    task = pool.apply_async(time.sleep, (4,))
    mine = {c.pid for c in multiprocessing.active_children()}
    with pytest.raises(TrainingError, match=r"a data-loading worker \(pid.*\) (is killed by signal: Killed|exited "
                                            r"unexpectedly) .*"
                                            r"last.ckpt' keeps the last checkpoint saved: the same command with "
                                            r"--resume goes on from it"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, progress=False, callbacks=[KillWorker()],
                 overrides=[*OVERRIDES, "train.max_steps=40", "data.num_workers=2"])
    assert task.get(timeout=20) is None  # its task finished: its worker was not killed
    pool.close()
    pool.join()
    assert not [c for c in multiprocessing.active_children() if c.daemon]
    pretrain(None, raster_dir, out, resume=True, progress=False, overrides=["data.num_workers=0"])
    assert (out / "encoder" / "model.safetensors").is_file()


def test_a_process_that_loses_another_process_of_its_run_says_so_in_one_line(tmp_path: Path) -> None:
    """Under DDP, a rank stopped by its own error (a corrupt window, the out-of-memory killer) left the first process
    a ~140-line gloo traceback, exit 1 and a log.txt naming only 'Connection closed by peer'."""
    from types import SimpleNamespace

    from geomed_ssl.errors import TrainingError
    from geomed_ssl.train.pretrain import fit

    lost = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:12192. This is typically caused by a remote worker crashing.")

    def fails(*args, **kwargs) -> None:
        raise lost

    data = SimpleNamespace(dataset=SimpleNamespace(close=lambda: None))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=None), fit=fails, world_size=2, global_step=6)
    with pytest.raises(TrainingError, match=r"another process of this multi-process run stopped.*error is in the "
                                            r"run's console output.*last.ckpt' keeps the last checkpoint saved: the "
                                            r"same command with --resume goes on from it"):
        fit(trainer, None, data, None, StopRequest(), tmp_path)
    trainer.world_size = 1  # one process: no other to blame, the error as it is
    with pytest.raises(RuntimeError, match="Connection closed by peer") as info:
        fit(trainer, None, data, None, StopRequest(), tmp_path)
    assert not isinstance(info.value, TrainingError)


def test_a_second_ctrl_c_as_a_stopped_run_ends_is_the_stop_not_a_silent_exit_1(tmp_path: Path) -> None:
    """The run's stop saved and put Python's Ctrl-C handler back (on_train_end) while still inside trainer.fit; a
    second Ctrl-C then became Lightning's exit(1): no line, exit 1, log.txt 'error: 1'."""
    from types import SimpleNamespace

    from geomed_ssl.errors import RunStopped
    from geomed_ssl.train.pretrain import fit

    def exits(*args, **kwargs) -> None:
        raise SystemExit(1)

    data = SimpleNamespace(dataset=SimpleNamespace(close=lambda: None))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=None), fit=exits, world_size=1, global_step=6)
    stop = StopRequest()
    stop.signum = signal.SIGINT  # the first Ctrl-C: the stop the run saved for
    with pytest.raises(RunStopped, match="stopped by SIGINT, and a second Ctrl-C came as it ended; .*last.ckpt' "
                                         "keeps the last checkpoint saved") as info:
        fit(trainer, None, data, None, stop, tmp_path)
    assert info.value.signal == "SIGINT"
    with pytest.raises(SystemExit):  # no stop requested: Lightning's exit as it is
        fit(trainer, None, data, None, StopRequest(), tmp_path)


def test_a_sigterm_lightning_hears_before_the_runs_own_stop_is_one_line_not_a_silent_exit(
        raster_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Between Lightning's handler and the run's stop (installed at train start), a SIGTERM reached Lightning only:
    its SIGTERMException ended the process with exit 0 and no word."""
    import os
    import signal

    from geomed_ssl.errors import RunStopped
    from geomed_ssl.train import pretrain as pretrain_mod

    real = pretrain_mod.PretrainData.train_dataloader

    def loader_then_sigterm(self):
        os.kill(os.getpid(), signal.SIGTERM)  # as fit_loop.setup_data asks for the loader
        return real(self)

    monkeypatch.setattr(pretrain_mod.PretrainData, "train_dataloader", loader_then_sigterm)
    with pytest.raises(RunStopped, match="stopped by SIGTERM as it started; no checkpoint was saved"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, tmp_path / "run", overrides=OVERRIDES, progress=False)


def test_a_resume_that_changes_settings_says_so_and_keeps_what_the_first_steps_ran_with(raster_dir: Path,
                                                                                       tmp_path: Path, caplog) -> None:
    """--set train.seed=1 on a resume trained otherwise from step 6 on without a word, and config.yaml then claimed
    seed 1 for every step."""
    import yaml

    run = killed_at_step_7(raster_dir, tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        pretrain(None, raster_dir, run, resume=True, progress=False, overrides=["train.seed=1"])
    said = " ".join(caplog.text.split())
    assert "--resume from step 5 changes train.seed 0 -> 1: the steps from 6 on train with them" in said
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1
    assert yaml.safe_load((run / "config-until-step-000005.yaml").read_text())["train"]["seed"] == 0
    assert "changes train.seed" in (run / "log.txt").read_text()
    from geomed_ssl.outdirs import foreign_inside

    assert foreign_inside(run) == []  # --overwrite may delete it with the run
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):  # what only says how it runs, or how long: no word
        pretrain(None, raster_dir, run, resume=True, progress=False,
                 overrides=["data.stats_windows=16", "data.num_workers=0", "train.max_steps=12"])
    assert "changes" not in caplog.text and not (run / "config-until-step-000010.yaml").exists()


def test_a_resume_on_other_processes_with_the_same_global_batch_is_no_change() -> None:
    """A run of 2 processes x batch 4 resumed as 1 x 8 replays the uninterrupted run (a 2-process run equals one
    process on the same global batch), yet was warned about as one that no longer does."""
    from geomed_ssl.train.checkpointing import resume_changes

    def saved(batch, devices, nodes=1):
        return {"geomed_ssl": {"recipe": {"train": {"batch_size": batch, "devices": devices, "num_nodes": nodes}}}}

    def now(batch, devices, nodes=1):
        return {"train": {"batch_size": batch, "devices": devices, "num_nodes": nodes}}

    assert resume_changes(saved(4, 2), now(8, 1)) == []
    assert resume_changes(saved(2, 2, 2), now(4, 1, 2)) == []
    assert resume_changes(saved(4, 2), now(4, 1)) == ["train.devices 2 -> 1"]  # half the global batch
    assert resume_changes(saved(4, "auto"), now(8, 1)) == ["train.batch_size 4 -> 8", "train.devices 'auto' -> 1"]


def test_a_run_whose_config_yaml_is_gone_resumes_from_the_recipe_its_checkpoint_holds(raster_dir: Path,
                                                                                     tmp_path: Path, caplog) -> None:
    """The checkpoint holds the whole recipe: the advice to start again with --overwrite threw a resumable run away."""
    full = tmp_path / "full"
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, full, overrides=OVERRIDES, progress=False)
    run = killed_at_step_7(raster_dir, tmp_path / "run")
    (run / "config.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        resumed = pretrain(None, raster_dir, run, resume=True, progress=False)
    assert "config.yaml' is missing; the run's recipe is read from its checkpoint 'last.ckpt' (step 5)" in caplog.text
    assert resumed.steps == 10 and (run / "config.yaml").is_file() and "changes" not in caplog.text
    a, b = rows(full), rows(run)
    np.testing.assert_allclose([b[s]["loss"] for s in range(6, 11)], [a[s]["loss"] for s in range(6, 11)], atol=1e-5)


def test_a_run_of_an_older_version_read_back_from_its_checkpoint_keeps_what_it_started_with(raster_dir: Path,
                                                                                           tmp_path: Path) -> None:
    """Without config.yaml, the checkpoint's recipe is the record of the run's first settings: a run started when
    every step-*.ckpt was kept (no train.keep_checkpoints in its recipe) keeps them all, as with its config.yaml."""
    from geomed_ssl.train.resuming import resolve_recipe

    run = killed_at_step_7(raster_dir, tmp_path / "run")
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        state["geomed_ssl"]["recipe"]["train"].pop("keep_checkpoints", None)  # as a version before it wrote it
        torch.save(state, ckpt)
    (run / "config.yaml").unlink()
    assert resolve_recipe(None, run, None, resume=True).train.keep_checkpoints is None
    assert resolve_recipe(None, run, ["train.keep_checkpoints=2"], resume=True).train.keep_checkpoints == 2


def test_a_resume_into_a_checkpoints_folder_it_cannot_write_is_refused_before_training(
        raster_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Only the run folder was checked: a read-only checkpoints/ trained steps that the first save then lost. As root
    (these tests) a mode does not stop a write, so the read-only folder is played by os.access."""
    from geomed_ssl.errors import OutputError

    run = killed_at_step_7(raster_dir, tmp_path / "run")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "checkpoints" and real(p, mode))
    with pytest.raises(OutputError, match=r"cannot write in '.*checkpoints' \(read-only or not yours\)"):
        pretrain(None, raster_dir, run, resume=True, progress=False)
    assert rows(run) and max(rows(run)) <= 7  # nothing trained
