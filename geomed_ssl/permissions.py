"""Modes of files the toolkit writes through temp files: what a plain ``open``/``mkdir`` would give under the umask.

``tempfile.mkdtemp`` makes 0700 folders and safetensors writes 0600 files, so an export swapped into place from a
temp folder would be private to its writer even where the user's umask shares outputs (group storage, a lab
server). :func:`apply_umask` gives such a tree the ordinary modes: folders ``0o777 & ~umask``, files
``0o666 & ~umask``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` and everything under it the modes ``mkdir`` / ``open`` would have under the current umask."""
    mask = current_umask()
    root = Path(path)
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    if root.is_file():
        os.chmod(root, file_mode)
        return
    for folder, _, files in os.walk(root):
        os.chmod(folder, dir_mode)
        for name in files:
            target = Path(folder) / name
            if not target.is_symlink():
                os.chmod(target, file_mode)
