"""One writer per output folder: a command that owns its folder (pretrain, finetune, compare, embed, cluster, demo)
holds ``.geomed-ssl.lock`` there exclusively for as long as it runs, so a second process that would resume, replace or
add to the same folder is refused instead of interleaving with it (two embeds finalising each other's parts, an
``--overwrite`` deleting a live run's checkpoints). Commands several jobs may share a folder with (predict, evaluate,
similar) hold it shared for their whole run: they do not refuse one another, but a command that would own the folder
is refused while any of them runs, and they are refused while such a command runs. Their read-merge-write of a file
they share (``predictions.csv``) takes turns through a brief lock on ``.geomed-ssl.merge.lock``
(:func:`locked_briefly`).

The locks are advisory ``flock``s: the kernel releases them when their process ends, however it ends, so a killed
run never leaves a stale lock (only, at most, an unlocked file that the next command takes). The file holds who took
it (command, process id, machine tag, time) for the refusal message and is deleted by the last holder to let go; a
process that waited on a file deleted meanwhile locks the new one instead. Where ``flock`` is missing (Windows) or
the filesystem refuses it (some network mounts), folders are not guarded and commands run as before. A lock taken
inside a call from Python is let go when that call returns (:func:`released_after`)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import stat
import time
from typing import Iterator

from geomed_ssl.errors import OutputError
from geomed_ssl.outfiles import host_tag

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, folders unguarded
    fcntl = None  # type: ignore[assignment]

LOCK = ".geomed-ssl.lock"
MERGE_LOCK = ".geomed-ssl.merge.lock"  # the sharers' turn at a file they share (locked_briefly)
PathLike = str | os.PathLike
_HELD: dict[str, int] = {}  # real path of a folder -> the open lock file this process holds there exclusively
_SHARED: dict[str, int] = {}  # ... and shared (predict, evaluate, similar)
TRIES, TRY_WAIT_S = 10, 0.05  # a lock let go as it is taken (its last sharer deleting the file): try again, briefly


def _flock(fd: int, blocking: bool, shared: bool = False) -> bool:
    """Lock ``fd`` exclusively (or ``shared``); False when another process holds it so (non-blocking); raises
    OSError when locks are not available here."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if isinstance(info, dict) and "pid" not in info and info.get("command"):  # sharers, their first one gone
        return f"`geomed-ssl {info['command']}` jobs"
    if not isinstance(info, dict) or "pid" not in info:
        return "another geomed-ssl process"
    where = "on this machine" if info.get("host") == host_tag() else "on another machine or container"
    since = str(info.get("since", ""))[11:19]
    return (f"`geomed-ssl {info.get('command', '?')}` (process {info['pid']} {where}"
            + (f", since {since} UTC" if since else "") + ")")


def _open_lock(path: str) -> int:
    """The lock file, opened (made) without following a link: a link planted under its name would have the lock's
    text written into the file it points to. Anything but a regular file there is an OutputError."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as err:
        if os.path.islink(path) or err.errno in (errno.ELOOP, errno.ENXIO):
            raise OutputError(f"'{path}' is a link or a special file, not geomed-ssl's lock file; remove it (and "
                              "check who put it there), or choose another --out.") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"'{path}' is not a regular file, not geomed-ssl's lock file; remove it, or choose another "
                          "--out.")
    return fd


def _acquire(folder: str, blocking: bool, shared: bool = False) -> int | None:
    """The open, locked lock file of ``folder``; None when another process holds it (non-blocking). A lock file its
    last holder deleted while this one waited for it is left for the new one. OSError: no locks here."""
    path = os.path.join(folder, LOCK)
    while True:
        fd = _open_lock(path)
        try:
            if not _flock(fd, blocking, shared):
                os.close(fd)
                return None
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        here = os.fstat(fd)
        if (here.st_dev, here.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)


def _release(folder: str, fd: int, shared: bool = False) -> None:
    """Delete the lock file, then let go of it (a process waiting on it finds it deleted and takes a new one); a
    shared hold deletes it only when it is the last (it can lock the file exclusively)."""
    if shared:
        try:
            last = _flock(fd, blocking=False)  # (a failed attempt lets go of this hold too)
        except OSError:
            last = False
        if not last:
            _forget_name(fd)
            os.close(fd)
            return
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(os.path.join(folder, LOCK))):
            if shared:  # the last sharer: no other waits for a turn at a shared file
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, MERGE_LOCK))
            os.unlink(os.path.join(folder, LOCK))
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)  # forked workers share the open file: unlock it for all of them
    os.close(fd)


def _forget_name(fd: int) -> None:
    """A sharer leaving before others takes its name out of the lock file (the command stays: its jobs still run),
    so a refusal never names a process that has ended."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        if isinstance(info, dict) and info.get("pid") == os.getpid() and info.get("host") == host_tag():
            text = json.dumps({"command": info.get("command")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)


def in_use(folder: PathLike, holder: str) -> OutputError:
    """The refusal of a folder another process holds: who, and the ways on."""
    return OutputError(f"output folder '{folder}' is in use by {holder}; wait for it to finish, or choose another "
                       "--out.")


def _read_holder(key: str) -> str:
    try:
        fd = os.open(os.path.join(key, LOCK), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            return _holder(fd)
        finally:
            os.close(fd)
    except OSError:
        return "another geomed-ssl process"


def lock_folder(folder: PathLike, command: str, shared: bool = False) -> None:
    """Hold ``folder``'s lock for ``command`` until this process ends or :func:`released_after` lets it go:
    exclusively, or ``shared`` with other sharers; nothing when this process holds it already. An ``OutputError``
    naming the holder when another process holds it in a way that excludes this one."""
    key = os.path.realpath(folder)
    if key in _HELD or key in _SHARED or fcntl is None:
        return
    for attempt in range(TRIES):
        try:
            fd = _acquire(key, blocking=False)  # alone: this process's name goes in (a sharer then steps down)
            first = fd is not None
            if fd is None and shared:
                fd = _acquire(key, blocking=False, shared=True)  # beside other sharers: their name stays
        except OSError:  # a filesystem without locks: unguarded, as before
            return
        if fd is not None:
            break
        time.sleep(TRY_WAIT_S)
    else:
        raise in_use(folder, _read_holder(key))
    if first:  # the name of a holder that was killed is replaced
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        text = json.dumps({"command": command, "pid": os.getpid(), "host": host_tag(), "since": now}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        if shared and not _flock(fd, blocking=False, shared=True):  # (an owner took it in the step down)
            os.close(fd)
            raise in_use(folder, _read_holder(key))
    (_SHARED if shared else _HELD)[key] = fd


def lock_holder(folder: PathLike, shared_ok: bool = False) -> str | None:
    """Who holds ``folder``'s lock when another process does (with ``shared_ok``: exclusively; sharers are no
    obstacle then), as its file says; None otherwise. Nothing is made: the lock file is only opened and tried."""
    key = os.path.realpath(folder)
    if key in _HELD or key in _SHARED or fcntl is None:
        return None
    try:
        fd = os.open(os.path.join(key, LOCK), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        for _ in range(TRIES):  # a last sharer deleting the file holds it exclusively for a moment
            try:
                if _flock(fd, blocking=False, shared=shared_ok):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    return None
            except OSError:  # a filesystem without locks
                return None
            time.sleep(TRY_WAIT_S)
        return _holder(fd)
    finally:
        os.close(fd)


def unlock_folder(folder: PathLike) -> None:
    """Let go of ``folder``'s lock if this process holds it."""
    key = os.path.realpath(folder)
    if (fd := _HELD.pop(key, None)) is not None:
        _release(key, fd)
    if (fd := _SHARED.pop(key, None)) is not None:
        _release(key, fd, shared=True)


@contextlib.contextmanager
def released_after() -> Iterator[None]:
    """Inside, the folder locks taken are let go when the block ends (a command called from Python: the folder is
    free for another process once the call returns); locks held before it stay held."""
    before = set(_HELD) | set(_SHARED)
    try:
        yield
    finally:
        for key in [k for k in [*_HELD, *_SHARED] if k not in before]:
            unlock_folder(key)


@contextlib.contextmanager
def locked_briefly(folder: PathLike, command: str = "predict") -> Iterator[None]:
    """Inside, a turn at ``folder``'s shared files is held, waiting for another process's brief hold to end (the
    read-merge-write of a file jobs sharing the folder share); nothing to wait for where this process owns the
    folder, or where locks are not available. A job that shares the folder (its lock held shared for its run) takes
    :data:`MERGE_LOCK` (a file: network filesystems pass a file's locks between machines; the last sharer to let go
    deletes it); a caller that holds no lock there (a library call) shares the folder as ``command`` for the moment
    (refused, naming the owner, while a command that owns the folder runs)."""
    key = os.path.realpath(folder)
    if key in _HELD or fcntl is None:
        yield
        return
    if key not in _SHARED:
        lock_folder(folder, command, shared=True)
        if key not in _SHARED:  # a filesystem without locks: unguarded, as before
            yield
            return
        try:
            with locked_briefly(folder, command):
                yield
        finally:
            unlock_folder(folder)
        return
    try:
        fd = _open_lock(os.path.join(key, MERGE_LOCK))
    except OSError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a filesystem without locks: unguarded, as before
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)  # lets go of the lock
