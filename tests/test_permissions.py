"""Modes of trees written through temp files follow the umask."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from geomed_ssl.permissions import apply_umask, current_umask


def test_current_umask_reads_the_process_umask_without_changing_it() -> None:
    old = os.umask(0o037)
    try:
        assert current_umask() == 0o037
        assert current_umask() == 0o037
    finally:
        os.umask(old)


def test_apply_umask_opens_a_private_temp_tree_as_mkdir_and_open_would(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        tree = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
        (tree / "sub").mkdir(mode=0o700)
        fd, name = tempfile.mkstemp(dir=tree / "sub")  # 0600
        os.close(fd)
        apply_umask(tree)
        assert [oct(p.stat().st_mode & 0o777) for p in (tree, tree / "sub", Path(name))] == ["0o755", "0o755",
                                                                                            "0o644"]
    finally:
        os.umask(old)
