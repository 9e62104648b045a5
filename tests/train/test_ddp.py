"""Multi-process pretraining on CPU (gloo, 2 processes), through the real command line: Lightning runs the command
again for rank 1 (``ddp``) or starts worker processes (``ddp_spawn`` / ``ddp_fork``), so each test runs
``python -m geomed_ssl.cli`` as a subprocess. Only rank 0 writes; a kill is resumable; 2 processes x batch B train
exactly as 1 process x batch 2B."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import pytest
import torch

from tests.conftest import TINY, TINY_BASE, structured_raster, structured_rasters, write_geotiff

ROOT = Path(__file__).resolve().parents[2]
# stochastic depth on: each sample's drops must follow it to whichever rank it lands on, as its masks do
BASE = [*TINY, "data.sensor=null", "data.patch_size=16", "train.accelerator=cpu", "train.checkpoint_every=1",
        "model.drop_path=0.5"]
DDP = ["train.devices=2", "train.strategy=ddp", "train.batch_size=4"]
RUN_FILES = {".geomed-ssl.json", "config.yaml", "catalog.json", "stats.json", "metrics.csv", "log.txt", "checkpoints",
             "encoder"}


def cli_args(data: Path, out: Path, sets: list[str], *extra: str,
             recipe: str = "recipes/mae_sentinel2.yaml") -> list[str]:
    args = [sys.executable, "-m", "geomed_ssl.cli", "pretrain", recipe, "--data", str(data), "--out", str(out), *extra]
    for item in sets:
        args += ["--set", item]
    return args


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): {k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)}


def ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def nodata_rasters(tmp_path_factory) -> Path:
    """Four 4-band 48x48 GeoTIFFs, two with a nodata stripe, so loss denominators differ between ranks."""
    folder = tmp_path_factory.mktemp("ddp") / "rasters"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        image = structured_raster(rng, 4, 48)
        if i % 2:
            image[:, 10:30, :] = 0
        write_geotiff(folder / f"scene_{i}.tif", image, nodata=0)
    return folder


@pytest.fixture(scope="module")
def ddp_run(nodata_rasters: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-step run on 2 processes (strategy ddp) with a checkpoint after each step."""
    out = nodata_rasters.parent / "run"
    return out, run(cli_args(nodata_rasters, out, [*BASE, *DDP, "train.max_steps=2"], recipe="mae_sentinel2"))


def test_ddp_run_finishes_with_its_checkpoints_and_one_set_of_files(ddp_run) -> None:
    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: 2 steps") == 1  # rank 1 reports nothing
    assert result.stderr.count("warning: train.warmup_steps") == 1, result.stderr  # nor repeats rank 0's notes
    assert result.stderr.count("using the bundled mae_sentinel2") == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]  # no rank fails on its way out either
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.ckpt", "step-000001.ckpt", "step-000002.ckpt"}
    assert ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 2 and sorted(metrics(out)) == [1, 2]


def test_two_processes_of_batch_b_train_as_one_process_of_batch_2b(ddp_run, nodata_rasters: Path,
                                                                   tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    pretrain("recipes/mae_sentinel2.yaml", nodata_rasters, one, progress=False,
             overrides=[*BASE, "train.batch_size=8", "train.max_steps=1"])
    assert (one / "stats.json").read_text() == (out / "stats.json").read_text()
    assert metrics(one)[1]["valid_fraction"] < 1  # nodata in the batch: the loss denominators are global
    assert metrics(one)[1]["loss"] == pytest.approx(metrics(out)[1]["loss"], rel=1e-5)
    a = ckpt(one / "checkpoints" / "last.ckpt")["state_dict"]
    b = ckpt(out / "checkpoints" / "step-000001.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    # atol: a key bias has a zero gradient in exact arithmetic (softmax ignores it) and Adam scales its rounding noise
    # up to ~1 % of an update (3e-4 here); masks drawn per rank instead of per sample would differ by whole updates
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_torchrun_launch_trains_as_lightnings_own_launch(ddp_run, nodata_rasters: Path, tmp_path: Path) -> None:
    """Clusters start the ranks themselves (``torchrun --nproc_per_node 2 -m geomed_ssl.cli pretrain ...``): the
    same run, one set of files, the same weights as Lightning's launch of the same two processes."""
    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    tr = tmp_path / "torchrun"
    args = cli_args(nodata_rasters, tr, [*BASE, *DDP, "train.max_steps=2"])
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args[1:]]
    done = run(launch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 2 steps") == 1  # rank 1 reports nothing
    assert {p.name for p in tr.iterdir()} == RUN_FILES
    assert {p.name for p in (tr / "checkpoints").iterdir()} == {"last.ckpt", "step-000001.ckpt", "step-000002.ckpt"}
    a, b = ckpt(tr / "checkpoints" / "last.ckpt")["state_dict"], ckpt(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_two_nodes_started_by_hand_train_as_two_processes_on_one(ddp_run, nodata_rasters: Path,
                                                                   tmp_path: Path) -> None:
    """Multi-node as the docs say to start it (the command on each node with MASTER_ADDR / MASTER_PORT / NODE_RANK,
    train.num_nodes=2), here two "nodes" of one process on this host: one set of files, written by rank 0 alone,
    node 1 silent, the same weights as two processes of one node."""
    import socket

    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    two = tmp_path / "nodes"
    args = cli_args(nodata_rasters, two, [*BASE, "train.devices=1", "train.num_nodes=2", "train.strategy=ddp",
                                          "train.batch_size=4", "train.max_steps=2"])
    logs = [(tmp_path / f"node{n}.out", tmp_path / f"node{n}.err") for n in (0, 1)]
    nodes = [subprocess.Popen(args, cwd=ROOT, stdout=out.open("w"), stderr=err.open("w"),
                              env={**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(n)})
             for n, (out, err) in enumerate(logs)]
    deadline = time.monotonic() + 300
    try:  # a node that fails leaves the other waiting for it: stop both then
        while any(n.poll() is None for n in nodes) and not any(n.poll() for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
            node.wait()
    (out0, err0), (out1, err1) = ((out.read_text(), err.read_text()) for out, err in logs)
    assert [node.returncode for node in nodes] == [0, 0], err0[-3000:] + err1[-3000:]
    assert out0.count("done: 2 steps") == 1 and out1 == "" and "warning" not in err1, err1[-3000:]
    assert {p.name for p in two.iterdir()} == RUN_FILES
    a, b = ckpt(two / "checkpoints" / "last.ckpt")["state_dict"], ckpt(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_ddp_resume_with_more_steps_continues(ddp_run, tmp_path: Path, nodata_rasters: Path) -> None:
    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    resumed = run(cli_args(nodata_rasters, copy, ["train.max_steps=4"], "--resume"))  # ddp, from its config.yaml
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("done: 4 steps") == 1 and sorted(metrics(copy)) == [1, 2, 3, 4]
    assert ckpt(copy / "checkpoints" / "last.ckpt")["global_step"] == 4


def signalled_after_two_steps(args: list[str], out: Path, send: Callable[[int], None]
                              ) -> tuple[subprocess.Popen, str, str]:
    """Run the CLI ``args`` in its own session, ``send`` a signal to its process id once ``out/metrics.csv`` holds
    two steps (a scheduler preempting the job), and return the finished process with its output."""
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "metrics.csv").is_file() and len(metrics(out)) >= 2:
                break
            time.sleep(0.5)
        send(proc.pid)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, stdout, stderr


def test_ddp_run_stopped_by_sigterm_saves_and_resumes(nodata_rasters: Path, tmp_path: Path) -> None:
    out = tmp_path / "preempted"
    sets = [*BASE, *DDP, "train.max_steps=100000", "train.checkpoint_every=100000", "train.checkpoint_minutes=0"]
    proc, stdout, stderr = signalled_after_two_steps(cli_args(nodata_rasters, out, sets), out,
                                                     lambda pid: os.killpg(pid, signal.SIGTERM))  # every process
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped at step" in stdout and "--resume" in stdout
    step = ckpt(out / "checkpoints" / "last.ckpt")["global_step"]
    assert step >= 2
    resumed = run(cli_args(nodata_rasters, out, [f"train.max_steps={step + 2}"], "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"done: {step + 2} steps" in resumed.stdout and sorted(metrics(out)) == list(range(1, step + 3))


def children(pid: int) -> list[int]:
    """The process ids ``pid`` started (its threads' children, from /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")
def test_sigterm_to_one_other_rank_stops_the_run_as_sigterm_on_rank_0(nodata_rasters: Path, tmp_path: Path) -> None:
    """A ``kill`` of rank 1 alone: every rank stops after the same step, and rank 0 reports and exits as for a
    SIGTERM (143, which a scheduler reads as "preempted, resume"), not as a failure."""
    out = tmp_path / "one_rank"
    sets = [*BASE, *DDP, "train.max_steps=100000", "train.checkpoint_every=100000", "train.checkpoint_minutes=0"]
    proc, stdout, stderr = signalled_after_two_steps(
        cli_args(nodata_rasters, out, sets), out, lambda pid: [os.kill(c, signal.SIGTERM) for c in children(pid)])
    assert proc.returncode == 143, stderr[-3000:]
    assert "SIGTERM reached another process of this run" in stderr + stdout and "--resume" in stdout
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_sigterm_to_the_process_that_spawned_the_workers_stops_them_all(nodata_rasters: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "spawned"
    sets = [*BASE, *DDP, "train.strategy=ddp_spawn", "train.max_steps=100000", "train.checkpoint_every=100000",
            "train.checkpoint_minutes=0"]
    proc, stdout, stderr = signalled_after_two_steps(cli_args(nodata_rasters, out, sets), out,
                                                     lambda pid: os.kill(pid, signal.SIGTERM))  # the launcher only
    assert proc.returncode == 143, stderr[-3000:]
    assert stdout.count("stopped at step") == 1 and "--resume" in stdout
    step = ckpt(out / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= step < 100000 and f"stopped at step {step} " in stdout


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_spawn_and_fork_strategies_run_and_write_once(strategy: str, nodata_rasters: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / strategy
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    result = run(cli_args(nodata_rasters, out, [*BASE, *DDP, f"train.strategy={strategy}", "train.max_steps=2"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((tmp_path / "tmp").iterdir())  # Lightning's hand-back of the weights left a folder a run
    assert result.stdout.count("done: 2 steps") == 1
    assert {p.name for p in out.iterdir()} == RUN_FILES and sorted(metrics(out)) == [1, 2]
    assert ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    lines = (out / "log.txt").read_text().splitlines()  # rank 0's step lines, once, from whichever process trains
    assert lines[0].startswith("--- geomed-ssl ") and sum("  step 2/2  loss " in line for line in lines) == 1
    resumed = run(cli_args(nodata_rasters, out, ["train.max_steps=3", "train.base_lr=0.1"], "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = (out / "log.txt").read_text().splitlines()  # a forked rank 1 wrote rank 0's notes a second time
    assert sum("--resume: peak lr" in line for line in lines) == 1 and lines[-1].endswith("  done: 3 steps")
    import json

    manifest = json.loads((out / ".geomed-ssl.json").read_text())  # a folder of an earlier version, with the
    manifest["entries"].remove("log.txt")  # user's own log.txt in it: spawned rank 0 appended to it
    (out / ".geomed-ssl.json").write_text(json.dumps(manifest))
    (out / "log.txt").write_text("my notes\n")
    again = run(cli_args(nodata_rasters, out, ["train.max_steps=4"], "--resume"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "log.txt").read_text() == "my notes\n"


def gpu_without_cuda_init(monkeypatch) -> list[str]:
    """A machine with a GPU as NVML sees it (``is_available`` True) where anything that initialises CUDA in this
    process is recorded instead of run; returns the record."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("is_bf16_supported", "_lazy_init", "init", "current_device", "get_device_capability"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: calls.append(_n) or True)
    return calls


@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_notebook", "ddp_fork_find_unused_parameters_true"])
def test_auto_precision_under_a_forking_strategy_never_initialises_cuda_in_the_parent(strategy: str,
                                                                                      monkeypatch) -> None:
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.train.trainer import resolve_precision

    calls = gpu_without_cuda_init(monkeypatch)
    with pytest.raises(ConfigError, match=f"train.precision=auto with train.strategy={strategy} on GPUs"):
        resolve_precision("auto", "gpu", strategy)
    assert resolve_precision("bf16-mixed", "gpu", strategy) == "bf16-mixed"
    assert calls == []


def test_auto_strategy_on_several_devices_in_a_notebook_forks(monkeypatch) -> None:
    """Lightning turns strategy auto into ddp_fork in Jupyter / IPython when more than one device is asked for:
    auto precision then must not ask CUDA about bf16 in the parent either."""
    from lightning.fabric.utilities import imports

    from geomed_ssl.errors import ConfigError
    from geomed_ssl.train.trainer import forks, resolve_precision

    assert not forks("auto", 2)  # a script: Lightning picks ddp, which starts fresh processes
    monkeypatch.setattr(imports, "_IS_INTERACTIVE", True)
    assert forks("auto", 2) and forks("auto", -1) and forks("auto", "0,1") and forks("auto", [0, 1])
    assert not forks("auto", 1) and not forks("auto", "auto") and not forks("auto", [3]) and not forks("ddp", 2)
    calls = gpu_without_cuda_init(monkeypatch)
    with pytest.raises(ConfigError, match="train.precision=auto with train.strategy=auto on GPUs"):
        resolve_precision("auto", "gpu", "auto", 2)
    assert calls == []


def test_more_cpu_processes_than_cpus_are_warned_about(monkeypatch, tmp_path: Path, caplog) -> None:
    """train.devices=3 on a 2-core machine ran silently at half the speed of 2 processes (the DDP audit)."""
    import logging

    from geomed_ssl.config.sections import TrainConfig
    from geomed_ssl.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "usable_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        trainer_mod.build_trainer(TrainConfig(accelerator="cpu", devices=2, strategy="ddp"), tmp_path, [])
    assert "take turns" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        trainer_mod.build_trainer(TrainConfig(accelerator="cpu", devices=3, strategy="ddp"), tmp_path, [])
    assert "train.devices 3 CPU processes on 2 CPUs take turns on the cores" in caplog.text


def test_auto_precision_asks_the_gpu_about_bf16_only_when_nothing_forks(monkeypatch) -> None:
    from geomed_ssl.train.trainer import resolve_precision

    calls = gpu_without_cuda_init(monkeypatch)
    assert resolve_precision("auto", "gpu", "ddp") == "bf16-mixed" and calls == ["is_bf16_supported"]


SIMCLR = [*TINY_BASE, "data.sensor=null", "data.patch_size=16", "train.accelerator=cpu", "train.checkpoint_every=1",
          "method.name=simclr", "method.proj_hidden_dim=32", "method.proj_dim=16", "data.windows_per_read=1",
          "model.drop_path=0.5"]


def test_simclr_on_two_processes_trains_as_one_process_on_the_global_batch(nodata_rasters: Path,
                                                                           tmp_path: Path) -> None:
    """NT-Xent's negatives over the global batch (gathered with gradients), BatchNorm over the global batch and
    per-sample views: one step of 2 x 4 windows equals one step of 8 (the loss, and every weight after the update)."""
    from geomed_ssl.train.pretrain import pretrain

    ddp = tmp_path / "ddp"
    result = run(cli_args(nodata_rasters, ddp, [*SIMCLR, *DDP, "train.max_steps=1"]))
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    pretrain("recipes/mae_sentinel2.yaml", nodata_rasters, one, progress=False,
             overrides=[*SIMCLR, "train.batch_size=8", "train.max_steps=1"])
    assert metrics(one)[1]["loss"] == pytest.approx(metrics(ddp)[1]["loss"], rel=1e-5)
    a = ckpt(one / "checkpoints" / "last.ckpt")["state_dict"]
    b = ckpt(ddp / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and any("projector" in k for k in a)
    # two gradients are 0 in exact arithmetic, so Adam's first step turns their rounding noise into +-lr of either
    # sign: the attention key bias (softmax ignores it) and the encoder's final norm bias (a constant shift of the CLS
    # feature that the projector's BatchNorm removes); every other weight must agree
    for key in a:
        x, y = a[key], b[key]
        if key == "method.encoder.norm.bias":
            continue
        if key.endswith("attn.qkv.bias"):  # q and v parts only
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=key)


def test_accumulated_micro_batches_on_two_processes_train_as_one_batch(tmp_path: Path) -> None:
    """Gradient accumulation draws each sample's mask from (seed, optimiser step, sample), not from the micro-batch
    it lands in, so 2 processes x 2 micro-batches of 2 windows, 1 process x 2 micro-batches of 4 and 1 process x 1
    batch of 8 make the same update (MAE without nodata: every micro-batch masks the same number of tokens) and
    log the same loss."""
    from geomed_ssl.train.pretrain import pretrain

    data = structured_rasters(tmp_path / "rasters", 4, seed=5)
    ddp = tmp_path / "ddp"
    result = run(cli_args(data, ddp, [*BASE, "train.devices=2", "train.strategy=ddp", "train.batch_size=2",
                                      "train.accumulate_grad_batches=2", "train.max_steps=1"]))
    assert result.returncode == 0, result.stderr[-3000:]
    states = {"ddp": ckpt(ddp / "checkpoints" / "last.ckpt")["state_dict"]}
    grads = {}
    for name, batch, accumulate in (("batch 8", 8, 1), ("2 x 4", 4, 2)):
        out, seen = tmp_path / name.replace(" ", ""), Gradients()
        pretrain("recipes/mae_sentinel2.yaml", data, out, progress=False, callbacks=[seen],
                 overrides=[*BASE, f"train.batch_size={batch}", f"train.accumulate_grad_batches={accumulate}",
                            "train.max_steps=1"])
        states[name], grads[name] = ckpt(out / "checkpoints" / "last.ckpt")["state_dict"], seen.grads
    # AdamW's first update hardly depends on the gradient's scale, so the gradients themselves are compared too
    # (micro-batch losses summed instead of averaged would double them)
    assert grads["batch 8"].keys() == grads["2 x 4"].keys() and grads["batch 8"]
    for key, grad in grads["batch 8"].items():
        torch.testing.assert_close(grads["2 x 4"][key], grad, rtol=1e-4, atol=1e-7, msg=key)
    reference = states.pop("batch 8")
    for name, state in states.items():
        assert state.keys() == reference.keys(), name
        for key in reference:  # atol: as in the nodata test above (a key bias's zero gradient, scaled up by Adam)
            torch.testing.assert_close(state[key], reference[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    # and they log the same: each step's row averages its micro-batches (not the last one's), in the same columns
    runs = {"batch 8": tmp_path / "batch8", "2 x 4": tmp_path / "2x4", "ddp": ddp}
    header = {name: (folder / "metrics.csv").read_text().splitlines()[0] for name, folder in runs.items()}
    assert header["2 x 4"] == header["ddp"] == header["batch 8"], header
    for name in ("2 x 4", "ddp"):
        for key in ("loss", "valid_fraction"):
            assert metrics(runs[name])[1][key] == pytest.approx(metrics(runs["batch 8"])[1][key], rel=1e-5), name


class Gradients(L.Callback):
    """The gradients of the first optimiser step (after every micro-batch's backward pass, before clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

