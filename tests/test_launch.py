"""Commands started by torchrun or ``srun -n N`` as several processes: ``pretrain`` trains one run across them
only when the recipe asks for that many, and every other command runs once, in rank 0 (the others exit 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.launch import Launch, launched
from tests.conftest import TINY, structured_raster, write_geotiff

runner = CliRunner()
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_STEP_NUM_TASKS", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES")


def set_launch(monkeypatch, env: dict[str, str]) -> None:
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"}, Launch(1, 2, "torchrun")),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, Launch(0, 2, "the launcher")),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"}, None),  # torchrun, 1 process
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1", "NODE_RANK": "0"}, None),  # a rank Lightning's own ddp started
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # the batch script of a 4-task job: one process
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}, Launch(2, 4, "srun")),
])
def test_launched_reads_the_launchers_environment(monkeypatch, env: dict[str, str], expected: Launch | None) -> None:
    set_launch(monkeypatch, env)
    assert launched() == expected


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    img = structured_raster(rng, 4, 32)
    cls = (img[0] > np.median(img[0])).astype(np.uint8) + 1
    for folder, array in (("images", img), ("labels", cls[None])):
        (tmp_path / folder).mkdir()
        write_geotiff(tmp_path / folder / "scene.tif", array)
    return tmp_path / "images", tmp_path / "labels"


def finetune_args(scene: tuple[Path, Path], out: Path) -> list[str]:
    sets = [*TINY, "data.sensor=null", "data.patch_size=16", "finetune.max_steps=2", "finetune.batch_size=2",
            "finetune.warmup_steps=1", "finetune.feature_size=8"]
    return ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--images", str(scene[0]),
            "--labels", str(scene[1]), "--out", str(out), "--labels-per-class", "3",
            *[a for s in sets for a in ("--set", s)]]


@pytest.mark.parametrize("env", [{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"},
                                 {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}])
def test_a_one_process_command_leaves_the_work_to_rank_0(monkeypatch, scene, tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    set_launch(monkeypatch, env)
    out = tmp_path / "ft"
    result = runner.invoke(app, finetune_args(scene, out))
    assert result.exit_code == 0, result.output
    assert "rank 1 has nothing to do and exits" in result.output
    assert not out.exists()  # nothing written by a rank other than 0


def test_rank_0_runs_the_command_once_and_says_the_others_exit(monkeypatch, scene, tmp_path: Path) -> None:
    set_launch(monkeypatch, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"})
    out = tmp_path / "ft"
    result = runner.invoke(app, finetune_args(scene, out))
    assert result.exit_code == 0, result.output
    assert "torchrun started 2, rank 0 does the work" in result.output
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("rank, strategy", [("0", "auto"), ("1", "auto"), ("0", "ddp"), ("1", "ddp")])
def test_pretrain_refuses_a_launch_of_more_processes_than_the_recipe_trains(monkeypatch, scene, tmp_path: Path,
                                                                            rank: str, strategy: str) -> None:
    """Each of the N processes would otherwise train its own copy into one run folder (every one as rank 0).
    With train.strategy=ddp (the docs' multi-node setting) Lightning takes its world size from the launcher, so
    the check compared 2 with 2 and both ranks wrote a run folder before failing with a traceback."""
    set_launch(monkeypatch, {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank, "TORCHELASTIC_RUN_ID": "x"})
    out = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "train.max_steps=2", f"train.strategy={strategy}", "train.accelerator=cpu"]
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(scene[0]), "--out",
                                 str(out), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2, result.output
    assert f"torchrun started 2 processes (this is rank {rank})" in result.output
    assert "train.devices x train.num_nodes = 1" in result.output
    assert not out.exists()


def test_a_rank_that_cannot_see_the_run_to_resume_says_why_and_that_the_others_wait(monkeypatch, scene,
                                                                                      tmp_path: Path) -> None:
    set_launch(monkeypatch, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"})
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--resume", "--data", str(scene[0]),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "rank 1 of 2: --resume: there is no run in" in result.output
    assert "Every rank must see the run folder on shared storage" in result.output


def test_rank_0_of_a_one_process_command_then_runs_alone(monkeypatch) -> None:
    """The demo pretrains inside rank 0 after the other ranks left: that run is one process, not refused for the
    launcher's count; the next command reads the launcher's variables again."""
    from geomed_ssl.launch import check_pretrain_world, runs_here, set_alone

    set_launch(monkeypatch, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"})
    try:
        assert runs_here("geomed-ssl demo") and launched() is None
        check_pretrain_world(1)  # no error: this process is alone now
    finally:
        set_alone(False)
    assert launched() == Launch(0, 2, "torchrun")


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_pretrain_under_torchrun_refuses_a_strategy_that_starts_its_own_workers(monkeypatch, scene, tmp_path: Path,
                                                                               strategy: str) -> None:
    """Each torchrun rank would start two more workers: four processes on two ranks hang or crash in gloo."""
    set_launch(monkeypatch, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"})
    out = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(scene[0]), "--out",
                                 str(out), *[a for s in [*TINY, "data.sensor=null", "train.max_steps=2",
                                                         "train.accelerator=cpu", "train.devices=2",
                                                         f"train.strategy={strategy}"] for a in ("--set", s)]])
    assert result.exit_code == 2, result.output
    assert f"train.strategy={strategy} would start more workers" in result.output
    assert "use train.strategy=ddp (or auto) under torchrun" in result.output and not out.exists()


def test_a_further_rank_of_a_pretrain_says_only_errors_and_the_callers_level_comes_back(monkeypatch, tmp_path) -> None:
    """Lightning's ddp starts rank 1 with LOCAL_RANK=1: its recipe note and data warnings repeated rank 0's."""
    import logging

    from geomed_ssl.launch import further_rank

    package = logging.getLogger("geomed_ssl")
    set_launch(monkeypatch, {"LOCAL_RANK": "1", "NODE_RANK": "0", "MASTER_PORT": "12345"})
    assert further_rank()
    monkeypatch.setattr(package, "level", logging.WARNING)
    seen = []
    monkeypatch.setattr("geomed_ssl.train.pretrain.pretrain", lambda *a, **k: seen.append(package.level) or 1 / 0)
    result = runner.invoke(app, ["pretrain", "mae_sentinel2", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert seen == [logging.ERROR] and result.exit_code != 0
    assert package.level == logging.WARNING  # put back for whatever the caller runs next
    set_launch(monkeypatch, {"LOCAL_RANK": "0", "NODE_RANK": "0", "MASTER_PORT": "12345"})
    assert not further_rank()


def test_a_further_rank_of_pretrain_called_from_python_says_only_errors(monkeypatch, scene, tmp_path, caplog) -> None:
    """A script torchrun starts calls pretrain() itself: no CLI quietened rank 1 first, so its notes on the recipe
    (here: --set method.name drops the recipe's method settings) repeated rank 0's; its error still says what
    failed (here: a MAE key the new method does not take)."""
    import logging

    from geomed_ssl.errors import ConfigError
    from geomed_ssl.train.pretrain import pretrain

    package = logging.getLogger("geomed_ssl")
    level = package.level
    for env, said in (({"LOCAL_RANK": "1", "NODE_RANK": "0", "MASTER_PORT": "12345"}, False), ({}, True)):
        set_launch(monkeypatch, env)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="geomed_ssl"), pytest.raises(ConfigError, match="unknown key"):
            pretrain("recipes/mae_sentinel2.yaml", scene[0], tmp_path / "run", overrides=[*TINY, "method.name=simclr"])
        assert ("replaces the recipe's method 'mae'" in caplog.text) == said
        assert package.level == level


def test_srun_tasks_per_node_other_than_train_devices_are_one_line(monkeypatch, scene, tmp_path: Path) -> None:
    """srun -N 2 --ntasks-per-node 2 with train.devices=4 train.num_nodes=1: the product matches, the split does
    not; Lightning said so at fit, with a traceback."""
    set_launch(monkeypatch, {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4",
                             "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "job",
                             "SLURM_LOCALID": "0", "SLURM_NODEID": "0"})
    out = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "train.max_steps=2", "train.strategy=ddp", "train.accelerator=cpu",
            "train.devices=4", "train.num_nodes=1"]
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(scene[0]), "--out", str(out),
                                 *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2, result.output
    assert "train.devices x train.num_nodes = 4 x 1 does not fit the launch" in result.output
    assert "--ntasks-per-node=2" in result.output and not out.exists()


def test_a_node_rank_outside_the_run_and_a_bad_master_port_are_one_line_each(monkeypatch, scene,
                                                                              tmp_path: Path) -> None:
    """A node started with NODE_RANK=1 but train.num_nodes=1 crashed in the process group (a traceback) while the
    first node waited for it; a MASTER_PORT that is no port number failed with a ValueError traceback."""
    out = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "train.max_steps=2", "train.strategy=ddp", "train.accelerator=cpu",
            "train.devices=1"]
    args = ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(scene[0]), "--out", str(out),
            *[a for s in sets for a in ("--set", s)]]
    set_launch(monkeypatch, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"})
    result = runner.invoke(app, [*args, "--set", "train.num_nodes=1"])
    assert result.exit_code == 2, result.output
    assert "this process is rank 1 (node rank 1) of a run of 1 process(es)" in result.output
    monkeypatch.setenv("MASTER_PORT", "29500x")
    result = runner.invoke(app, [*args, "--set", "train.num_nodes=2"])
    assert result.exit_code == 2, result.output
    assert "MASTER_PORT='29500x' is not a port number" in result.output
    assert not out.exists()


class FakeEnv:
    """A Lightning cluster environment of ``world`` processes at 10.0.0.1:29500, seen from ``rank``."""

    main_address, main_port = "10.0.0.1", 29500

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def global_rank(self) -> int:
        return self.rank

    def world_size(self) -> int:
        return self.world


def test_ranks_waiting_to_connect_say_so_once_and_let_sigterm_end_them(capsys) -> None:
    """torch waits for the other ranks in C++, where Python's handlers never run: a node never started left the
    first one silent and deaf to SIGTERM for the group's 30 minutes."""
    import signal
    import time
    from datetime import timedelta

    from geomed_ssl.ranks import waiting_for_ranks

    before = signal.getsignal(signal.SIGTERM)
    with waiting_for_ranks(FakeEnv(0, 4), timedelta(minutes=30), note_after=0.05):
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL == signal.getsignal(signal.SIGINT)
        time.sleep(0.3)
    assert signal.getsignal(signal.SIGTERM) == before
    err = capsys.readouterr().err
    assert err.count("rank 0 of the run is waiting for the others of its 4 processes to connect at "
                     "10.0.0.1:29500 (up to 30 minutes)") == 1
    with waiting_for_ranks(FakeEnv(0, 4), timedelta(minutes=30), note_after=5):
        pass  # connected at once: nothing said
    time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_ranks_that_cannot_connect_say_why_in_one_line(monkeypatch) -> None:
    """Rank 0 stopped (SIGTERM) while the ranks connected: the ranks it had started died with torch's traceback;
    rank 0 whose peers never came, or whose port was taken, got that traceback too. A backend's own error (NCCL)
    keeps torch's whole text."""
    import torch
    import torch.distributed as dist
    from lightning.fabric.utilities import distributed

    from geomed_ssl.errors import GeomedError
    from geomed_ssl.ranks import early_process_group

    def strategy(rank: int):
        class Strategy:
            cluster_environment, root_device, _timeout = FakeEnv(rank, 2), torch.device("cpu"), None

            def _get_process_group_backend(self) -> str:
                return "gloo"

        return Strategy()

    cases = [(1, dist.DistNetworkError("Failed to recv, got 0 bytes.\nException raised from recvBytes ..."),
              r"^rank 1 of the run could not connect to the others at 10\.0\.0\.1:29500 \(Failed to recv, got 0 "
              r"bytes\.\): the first process stopped"),
             (0, dist.DistStoreError("Timed out after 1801 seconds waiting for clients. 1/2 clients joined."),
              r"^rank 0 .*: the other 1 process\(es\) did not connect: a node not started"),
             (0, dist.DistNetworkError("The server socket has failed to listen on any local network address. "
                                       "port: 29500, useIpv6: false, code: -98, name: EADDRINUSE"),
              r"port 29500 is in use on this node: set another free MASTER_PORT")]
    def raising(err: Exception):
        def connect(*args, **kwargs):
            raise err
        return connect

    for rank, err, said in cases:
        monkeypatch.setattr(distributed, "_init_dist_connection", raising(err))
        with pytest.raises(GeomedError, match=said):
            early_process_group(strategy(rank))
    nccl = dist.DistBackendError("NCCL error in: ...\nLast error: Duplicate GPU detected")
    monkeypatch.setattr(distributed, "_init_dist_connection", raising(nccl))
    with pytest.raises(dist.DistBackendError, match="Duplicate GPU"):
        early_process_group(strategy(1))
