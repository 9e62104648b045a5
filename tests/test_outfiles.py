"""Files written under a temporary name and renamed when complete; the clean-up of what a killed writer left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geomed_ssl.outfiles import atomic_path, partial_path, remove_stale_partials


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert tmp.parent == tmp_path and tmp.name.endswith("summary.json") and target.read_text() == "old"
    assert target.read_text() == "new"


def test_stale_partials_of_dead_processes_are_removed_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".partial-{int(dead.stdout)}-scene_pred.tif"
    live = partial_path(tmp_path / "other_pred.tif")  # this process is alive
    keep = [live, tmp_path / ".partial-notes.txt", tmp_path / "scene_pred.tif"]
    for path in [stale, *keep]:
        path.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [stale]
    assert all(p.exists() for p in keep) and not stale.exists()
    assert os.getpid() != int(dead.stdout)
