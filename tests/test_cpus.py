"""The CPUs a process may use under a container CPU quota, and torch's threads kept within them."""

from __future__ import annotations

import os
import sys

import joblib.externals.loky.backend.context as loky_context
import pytest

from geomed_ssl import cpus
from geomed_ssl.train import trainer


@pytest.fixture
def quota_of_two(monkeypatch):
    """A 64-core host seen through the affinity mask, with a cgroup quota of 2 CPUs (docker --cpus 2)."""
    monkeypatch.setattr(loky_context.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(loky_context, "_cpu_count_affinity", lambda n: 64)
    monkeypatch.setattr(loky_context, "_cpu_count_cgroup", lambda n: 2)
    monkeypatch.setattr(cpus, "visible_cpus", lambda: 64)
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    for variable in cpus.THREAD_VARIABLES:
        monkeypatch.setenv(variable, "x")  # recorded as absent before, so the test leaves no variable behind
        monkeypatch.delenv(variable)
    monkeypatch.delitem(sys.modules, "torch")  # as before the first import; restored afterwards


def test_the_quota_caps_the_loader_workers(quota_of_two) -> None:
    assert cpus.usable_cpus() == 2
    assert trainer.loader_workers(8) == 2 and trainer.loader_workers(2) == 2 and trainer.loader_workers(0) == 0


def test_the_quota_caps_torch_threads_before_torch_loads(quota_of_two, caplog) -> None:
    with caplog.at_level("INFO", logger="geomed_ssl"):
        assert cpus.limit_threads_to_quota() == 2
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
    assert "2 of the 64 CPUs this process sees are usable" in caplog.text


def test_a_users_thread_count_wins(quota_of_two, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpus.limit_threads_to_quota() is None
    assert os.environ["OMP_NUM_THREADS"] == "5" and "MKL_NUM_THREADS" not in os.environ


def test_nothing_changes_without_a_quota_or_once_torch_is_loaded(quota_of_two, monkeypatch) -> None:
    monkeypatch.setattr(loky_context, "_cpu_count_cgroup", lambda n: 64)
    assert cpus.limit_threads_to_quota() is None and "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setattr(loky_context, "_cpu_count_cgroup", lambda n: 2)
    monkeypatch.setitem(sys.modules, "torch", object())
    assert cpus.limit_threads_to_quota() is None and "OMP_NUM_THREADS" not in os.environ
