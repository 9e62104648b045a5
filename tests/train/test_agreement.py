"""Ranks agree before rank 0 writes: a failure on any rank stops every rank at once with its message, and every
rank resumes from rank 0's checkpoint (2 gloo processes on CPU, started together as a cluster would)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.multiprocessing as mp

from geomed_ssl.errors import GeomedError
from geomed_ssl.ranks import Agreement

# Lightning and the package are imported inside the tests that need them: the ranks spawned below import this
# module again, and stay quick to start.


def _rank(rank: int, init: str, case: str, results: str) -> None:
    import torch.distributed as dist

    from geomed_ssl.ranks import GroupAgreement

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    agreement = GroupAgreement(rank, 2, dist.new_group(backend="gloo"))
    try:
        if case == "checkpoint":  # each rank found another checkpoint (storage that lags behind)
            chosen = agreement.share_checkpoint(f"/run/checkpoints/step-00000{rank + 5}.ckpt")
            agreement.all_passed()
            outcome = f"ok {chosen}"
        elif case == "last round":  # every check passed; then rank 0 fails to write the run folder
            agreement.share_checkpoint(None)
            agreement.all_passed(last=False)
            outcome = "passed?"
            try:
                with agreement.round():
                    if rank == 0:
                        raise GeomedError("output folder '/run' is in use by another geomed-ssl process")
            except GeomedError as err:
                outcome = f"{'failed' if rank == 0 else 'stopped'} {err}"
        elif case == "inputs":  # rank 1 scanned the data folder after a file was added to it
            agreement.share_checkpoint(None)
            outcome = "passed?"
            try:
                with agreement.round():
                    agreement.same_inputs("digest with 4 files" if rank == 0 else "digest with 5 files")
            except GeomedError as err:
                outcome = f"{'failed' if rank == 1 else 'stopped'} {err}"
        else:  # rank 1 fails its checks, rank 0 passes them
            if rank == 1:
                err = GeomedError("no usable raster files under '/data'")
                agreement.failed(err)
                outcome = f"failed {err}"
            else:
                agreement.share_checkpoint(None)
                outcome = "passed?"
    except GeomedError as err:
        outcome = f"stopped {err}"
    Path(results, str(rank)).write_text(outcome)
    dist.destroy_process_group()


def run_two_ranks(tmp_path: Path, case: str) -> dict[int, str]:
    (tmp_path / "results").mkdir()
    mp.start_processes(_rank, args=(f"file://{tmp_path / 'rendezvous'}", case, str(tmp_path / "results")),
                       nprocs=2, start_method="spawn")
    return {r: (tmp_path / "results" / str(r)).read_text() for r in (0, 1)}


def test_every_rank_resumes_from_the_checkpoint_rank_0_chose(tmp_path: Path) -> None:
    assert run_two_ranks(tmp_path, "checkpoint") == {0: "ok /run/checkpoints/step-000005.ckpt",
                                                     1: "ok /run/checkpoints/step-000005.ckpt"}


def test_a_rank_that_fails_its_checks_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    results = run_two_ranks(tmp_path, "failure")
    assert results[1] == "failed no usable raster files under '/data'"
    assert results[0] == ("stopped rank 1 of the run failed, so every rank stops: no usable raster files under "
                          "'/data'")


def test_a_rank_that_fails_in_the_last_round_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    """Rank 0 making or writing the run folder fails after every rank passed its checks: the others hear it in the
    last round instead of waiting in the training's first collective."""
    results = run_two_ranks(tmp_path, "last round")
    assert results[0] == "failed output folder '/run' is in use by another geomed-ssl process"
    assert results[1] == ("stopped rank 0 of the run failed, so every rank stops: output folder '/run' is in use by "
                          "another geomed-ssl process")


def test_a_rank_that_read_other_inputs_stops_every_rank(tmp_path: Path) -> None:
    """A recipe edited, or a file added to the data folder, while the ranks started: each would train on other data
    than the run folder records, so every rank stops before rank 0 writes."""
    results = run_two_ranks(tmp_path, "inputs")
    assert results[1].startswith("failed rank 1 read other inputs than rank 0: the recipe with its --set values, or")
    assert results[0].startswith("stopped rank 1 of the run failed, so every rank stops: rank 1 read other inputs")


LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME")


@pytest.mark.parametrize("devices, strategy, nodes, launch, starts", [
    (1, "auto", 1, {}, False),  # one process
    (2, "ddp", 1, {}, True),  # the command's process: it starts rank 1 before its checks
    (2, "ddp", 1, {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "29500"}, False),  # rank 1, started so
    (2, "ddp", 2, {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}, True),  # node 1 by hand: its own ranks
    (2, "ddp_spawn", 1, {}, False),  # the launching process checks, then starts its workers
])
def test_lightnings_ddp_starts_the_other_ranks_before_any_check(monkeypatch, devices: int, strategy: str,
                                                                 nodes: int, launch: dict, starts: bool) -> None:
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    from geomed_ssl.ranks import agreement_for, start_other_ranks
    from geomed_ssl.train.trainer import probe_trainer

    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    started: list[int] = []
    rank_1 = SimpleNamespace(poll=lambda: None, returncode=None)  # still starting
    monkeypatch.setattr(_SubprocessScriptLauncher, "_call_children_scripts",
                        lambda self: (started.append(self.num_processes), setattr(self, "procs", [rank_1])))
    probe = probe_trainer("cpu", devices, strategy, nodes, "32-true")
    checked: list[str] = []
    procs = start_other_ranks(probe, lambda: checked.append("--out"))
    assert procs == ([rank_1] if starts else []) and checked == (["--out"] if starts else [])
    if starts:
        procs.connected()  # its watch ends
    assert started == ([2] if starts else [])
    if devices == 1 or strategy == "ddp_spawn":  # nothing to agree on
        assert type(agreement_for(probe)) is Agreement


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["foreign", "locked"])
def test_ranks_started_together_stop_at_once_when_rank_0_refuses_the_out_folder(tmp_path: Path, case: str) -> None:
    """Both ranks start at once, as SLURM or one torchrun per node starts them (each with its rank in the
    environment): rank 0 refuses --out, rank 1 hears it and stops too, instead of waiting 30 minutes for a process
    group rank 0 never joins; so when --out passes the checks and rank 0 then cannot take it (another process holds
    its lock), after rank 1 has passed every check."""
    from geomed_ssl.outlocks import lock_folder, unlock_folder
    from tests.conftest import structured_rasters
    from tests.train.test_ddp import BASE, ROOT, cli_args, env

    data = structured_rasters(tmp_path / "data", 2, size=32)
    mine = tmp_path / "mine"
    mine.mkdir()
    if case == "foreign":
        (mine / "thesis.tex").write_text("precious")
    else:
        lock_folder(mine, "pretrain")  # this test process plays another run writing there
    args = cli_args(data, mine, [*BASE, "train.devices=2", "train.strategy=ddp", "train.max_steps=2"])
    launch = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
              "NODE_RANK": "0"}
    procs = [subprocess.Popen(args, cwd=ROOT, env={**launch, "LOCAL_RANK": str(r), "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]  # far less than the process group's 30 minutes
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        unlock_folder(mine)
    assert [p.returncode for p in procs] == [2, 2], [o[1][-2000:] for o in outs]
    refusal = "was not made by geomed-ssl" if case == "foreign" else "is in use by `geomed-ssl pretrain`"
    assert "error: output folder" in outs[0][1] and refusal in outs[0][1]
    assert "error: rank 0 of the run failed, so every rank stops: output folder" in outs[1][1]
    assert refusal in outs[1][1] and "Traceback" not in outs[1][1]
    assert sorted(p.name for p in mine.iterdir()) == (["thesis.tex"] if case == "foreign" else [])


def test_a_rank_that_ends_before_the_ranks_connect_stops_the_process_that_started_it(monkeypatch, capsys) -> None:
    """Rank 1 could not read the recipe (edited as the ranks started) and ended: rank 0, waiting for the process
    group, would wait 30 minutes; it stops with one line instead, before anything is written."""
    import threading

    from geomed_ssl import ranks

    stopped, codes = threading.Event(), []
    monkeypatch.setattr(ranks.os, "_exit", lambda code: (codes.append(code), stopped.set()))
    started = ranks.StartedRanks([SimpleNamespace(poll=lambda: 2, returncode=2, kill=lambda: None)], first_rank=0)
    assert stopped.wait(10)
    started.connected()
    assert codes[0] == 2
    assert "error: rank 1 of the run ended (exit code 2) before the ranks connected" in capsys.readouterr().err
