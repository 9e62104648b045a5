"""The CPUs a process may use: the affinity mask, lowered by a cgroup CPU quota read from cgroup v1 and v2 trees."""

from __future__ import annotations

import os
from pathlib import Path

from geomed_ssl import cpus
from geomed_ssl.train import trainer
from geomed_ssl.once import forget_said


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_rounds_down_and_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "250000 100000\n")  # docker --cpus 2.5, the container's own mount
    assert cpus.cgroup_cpu_limit(tmp_path, "0::/\n") == 2
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path, "0::/\n") is None
    write(tmp_path / "user.slice" / "job" / "cpu.max", "max 100000\n")
    write(tmp_path / "user.slice" / "cpu.max", "50000 100000\n")  # half a CPU: still one
    assert cpus.cgroup_cpu_limit(tmp_path, "0::/user.slice/job\n") == 1


def test_cgroup_v1_quota_in_the_cpu_hierarchy(tmp_path: Path) -> None:
    membership = "4:memory:/x\n3:cpu,cpuacct:/\n1:name=systemd:/\n"
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "300000\n")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path, membership) == 3
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")  # no quota
    assert cpus.cgroup_cpu_limit(tmp_path, membership) is None


def test_no_cgroup_files_or_garbage_mean_no_quota(tmp_path: Path) -> None:
    assert cpus.cgroup_cpu_limit(tmp_path, "0::/\n1:cpu:/\n") is None
    write(tmp_path / "cpu.max", "nonsense\n")
    assert cpus.cgroup_cpu_limit(tmp_path, "0::/\n") is None
    assert cpus.cgroup_cpu_limit(tmp_path, "") is None


def test_the_quota_caps_the_loader_workers_below_the_affinity_mask(monkeypatch) -> None:
    monkeypatch.setattr(cpus, "visible_cpus", lambda: 64)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 2)
    forget_said()
    assert cpus.usable_cpus() == 2
    assert trainer.loader_workers(8) == 2 and trainer.loader_workers(2) == 2 and trainer.loader_workers(0) == 0
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert cpus.usable_cpus() == 64


def test_a_quota_below_the_visible_cpus_sizes_torchs_pool_for_the_processes_unless_the_user_chose(monkeypatch
                                                                                                  ) -> None:
    import torch

    before = torch.get_num_threads()
    pool = type("Pool", (), {"size": 64})()  # torch's pool as the affinity mask sizes it
    monkeypatch.setattr(torch, "set_num_threads", lambda n: setattr(pool, "size", n))
    monkeypatch.setattr(cpus, "visible_cpus", lambda: 64)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 4)
    monkeypatch.setattr(cpus, "_exported", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert cpus.fit_threads_to_quota() is None and pool.size == 64  # the user's choice
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpus.fit_threads_to_quota() == 4 and pool.size == 4 and os.environ["OMP_NUM_THREADS"] == "4"  # the CLI
    assert cpus.fit_threads_to_quota() is None  # pretrain on one device: unchanged
    assert cpus.fit_threads_to_quota(2) == 2 and pool.size == 2  # two training processes on this node share it
    assert os.environ["OMP_NUM_THREADS"] == "2"  # so Lightning, and the ranks it starts, keep 2
    monkeypatch.setattr(cpus, "_exported", None)  # a rank Lightning started: the variable came from its parent
    assert cpus.fit_threads_to_quota(2) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    pool.size = 64
    assert cpus.fit_threads_to_quota() is None and pool.size == 64  # no quota: torch's own choice stands
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.undo()
    assert torch.get_num_threads() == before
