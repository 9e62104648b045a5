"""Files and folders that appear under their final name only when complete, and the clean-up of what a killed writer
left. Every atomic write of the toolkit goes through here: outputs, metrics, checkpoints, exports.

A file is written as ``.partial-<pid>-<name>`` in its own folder (same filesystem, so the final ``os.replace`` is
atomic; the full suffix is kept so writers that go by the extension, GDAL, nibabel, matplotlib, still work), flushed
to disk (fsync) and renamed over the target, and the rename is made durable by syncing the folder. A failure at any
point deletes the partial file and leaves the target as it was. Files get the modes a plain ``open`` gives under the
user's umask. :func:`remove_stale_partials` deletes the partial files whose process is gone. A folder is written
as a hidden temporary folder beside the target and swapped in whole (:func:`atomic_write_dir`).

API::

    partial_path(path) -> Path
    atomic_path(path) -> context manager yielding the temporary Path (the caller creates the file)
    atomic_write(path, write) -> Path (``write(binary file)``; the file is created here, never through a link)
    atomic_write_text(path, text) -> Path
    replace_with_copy(src, dst) -> None (a hard link when possible, else a copy)
    atomic_write_dir(target, write) -> None (``write(tmp_dir)``, then the folder is swapped in)
    remove_stale_partials(folder) -> list[Path]
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from geomed_ssl.permissions import apply_umask

PARTIAL = re.compile(r"^\.partial-(\d+)-(.+)$")
PathLike = str | os.PathLike


def partial_path(path: PathLike) -> Path:
    """The temporary name of ``path`` while it is written: hidden, in the same folder, full suffix kept (.tif,
    .nii.gz, .png), with this process's id so a later run can tell a killed writer's leftovers."""
    path = Path(path)
    return path.with_name(f".partial-{os.getpid()}-{path.name}")


def fsync_dir(folder: PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    fsync_dir(path.parent)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(file)`` into a new temporary file beside ``path`` (created here with the umask's permissions, never
    through an existing file or link), then fsync and rename it over ``path`` (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.unlink(missing_ok=True)  # a leftover of this very process (pid reuse): ours to replace
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def replace_with_copy(src: PathLike, dst: PathLike) -> None:
    """Make ``dst`` a copy of the finished file ``src``, atomically: a hard link when the filesystem has them (no
    data copied; a later save of either replaces its own name only), else a copy."""
    src, dst = Path(src), Path(dst)
    tmp = partial_path(dst)
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)

        def copy(f: BinaryIO) -> None:
            with src.open("rb") as s:
                shutil.copyfileobj(s, f, 16 * 2**20)

        atomic_write(dst, copy)
        return
    fsync_dir(dst.parent)


def atomic_write_dir(target: PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target``, so a kill never leaves a half-written folder.

    The temporary folder is ``.<name>.<random>`` beside ``target``. The result has the modes the user's umask
    gives new files and folders (not mkdtemp's private 0700/0600)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        apply_umask(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
