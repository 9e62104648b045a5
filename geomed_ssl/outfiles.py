"""Files that appear under their final name only when complete, and the clean-up of what a killed writer left.

A file is written as ``.partial-<pid>-<name>`` in its own folder (same filesystem, so the final ``os.replace`` is
atomic; the full suffix is kept so writers that go by the extension, GDAL, nibabel, matplotlib, still work) and
renamed when complete. :func:`remove_stale_partials` deletes the partial files whose process is gone.

API::

    partial_path(path) -> Path
    atomic_path(path) -> context manager yielding the temporary Path
    atomic_write_text(path, text) -> Path
    remove_stale_partials(folder) -> list[Path]
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL = re.compile(r"^\.partial-(\d+)-(.+)$")
PathLike = str | os.PathLike


def partial_path(path: PathLike) -> Path:
    """The temporary name of ``path`` while it is written: hidden, in the same folder, full suffix kept (.tif,
    .nii.gz, .png), with this process's id so a later run can tell a killed writer's leftovers."""
    path = Path(path)
    return path.with_name(f".partial-{os.getpid()}-{path.name}")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error the file is flushed to disk and
    renamed to ``path`` (so ``path`` is either the old file or the complete new one), else it is deleted."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def remove_stale_partials(folder: PathLike) -> list[Path]:
    """Delete the ``.partial-<pid>-<name>`` files in ``folder`` whose writing process is gone (a killed run's
    leftovers); files of live processes and any other names are left alone. Returns the deleted paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = PARTIAL.match(entry.name)
        if match and entry.is_file() and not entry.is_symlink() and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
