"""``log.txt`` in a run folder: every note and warning a pretraining run said, and its step lines, with their time,
kept beside its metrics once the terminal is gone (rank 0 only). What is said before the folder exists (the
catalog, the survey of the data) is held and written first; a resumed run appends to it under a line saying so.
The file is the toolkit's only when the folder's manifest lists it: a ``log.txt`` of the user's (a ``tee`` of the
console into a run folder of an earlier version) is never written to."""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import lightning as L

from geomed_ssl.errors import RunStopped, message_of
from geomed_ssl.outfiles import atomic_path, atomic_write_text

F = TypeVar("F", bound=Callable[..., Any])
LOG_FILE = "log.txt"
MAX_HELD = 10_000  # lines held before the folder exists (a folder of many problem files says one line each)
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)  # a link planted as log.txt is never followed
_ACTIVE: list["RunLog"] = []  # the handler of the run in progress in this process (innermost last)


def ours(path: Path) -> bool:
    """``path`` (a run folder's log.txt) is a plain file its folder's manifest lists: the toolkit's to append to."""
    from geomed_ssl.outowners import entry_names, read_manifest

    return path.is_file() and not path.is_symlink() and path.name in entry_names(read_manifest(path.parent))


class RunLog(logging.Handler):
    """The package's log records as lines, held until :meth:`attach` names the file, then appended to it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.held: list[str] = []
        self.dropped = 0  # held lines left out past MAX_HELD
        self.fd: int | None = None
        self.disabled = False  # the folder's log.txt is the user's (or cannot be written): nothing is written
        self.pid = os.getpid()  # a forked process inherits the handler: its pid tells

    def emit(self, record: logging.LogRecord) -> None:
        if self.disabled:
            return
        try:
            self.say(record.getMessage(), record.created)
        except Exception:  # a log line never stops a run (a full disk is said by the checkpoint that follows)
            self.handleError(record)

    def say(self, text: str, created: float | None = None) -> None:
        """One line (``text`` after its time), held or appended."""
        when = datetime.datetime.fromtimestamp(created or time.time()).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{when}  {text}\n"
        if self.fd is not None:
            os.write(self.fd, line.encode())
        elif len(self.held) < MAX_HELD:
            self.held.append(line)
        else:  # the head (the data's summary) and the latest line are kept; the count of those left out between
            self.dropped += 1
            self.held[-1] = line

    def attach(self, path: Path, resumed_at: int | None) -> None:
        """Write the lines held so far to ``path`` (a new file, whole; a resumed run's: appended after a line
        saying so) and append every later one; a ``log.txt`` the folder's manifest does not list is not ours: left
        alone, with a warning, and nothing is written."""
        from geomed_ssl._version import __version__
        from geomed_ssl.outowners import record_entries

        held = self.held[:-1] + [f"... {self.dropped} lines left out ...\n"] + self.held[-1:] if self.dropped else \
            self.held
        self.held, self.dropped = [], 0
        if path.exists() or path.is_symlink():
            if not ours(path):
                logging.getLogger("geomed_ssl").warning(
                    f"warning: '{path}' was not written by geomed-ssl: it is left as it is, and this run keeps no "
                    "log there (move that file away to have one).")
                self.disabled = True
                return
            head = (f"--- resumed from step {resumed_at} (geomed-ssl {__version__}) ---" if resumed_at is not None
                    else f"--- geomed-ssl {__version__} ---")
            if path.stat().st_nlink > 1:  # a hard-linked snapshot of the run (cp -al, rsnapshot) keeps its own log:
                _own_copy(path, keep=resumed_at is not None)  # written on from a copy of it, not in place
            self.fd = os.open(path, OPEN_FLAGS)
            if resumed_at is None:
                os.ftruncate(self.fd, 0)
            os.write(self.fd, (head + "\n" + "".join(held)).encode())
            return
        record_entries(path.parent, [path.name])  # listed first: a file of this name is ours from its first byte
        head = (f"--- geomed-ssl {__version__}, resumed from step {resumed_at} (no log.txt was found) ---"
                if resumed_at is not None else f"--- geomed-ssl {__version__} ---")
        atomic_write_text(path, head + "\n" + "".join(held))
        self.fd = os.open(path, OPEN_FLAGS)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()


def _own_copy(path: Path, keep: bool) -> None:
    """Put a file of its own in the place of ``path`` (one of several hard links to its data), with its content when
    ``keep``, streamed (a long run's log can be large)."""
    import shutil

    with atomic_path(path) as tmp:
        if keep:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            tmp.write_bytes(b"")


def _install(handler: RunLog) -> RunLog:
    """``handler`` receives the package's records and is the run log in progress in this process."""
    logging.getLogger("geomed_ssl").addHandler(handler)
    _ACTIVE.append(handler)
    return handler


def _uninstall(handler: RunLog) -> None:
    """``handler`` no longer receives records nor is the run log (its file stays open: ``close`` closes it)."""
    if handler in _ACTIVE:
        _ACTIVE.remove(handler)
    logging.getLogger("geomed_ssl").removeHandler(handler)


def keeps_run_log(fn: F) -> F:
    """``fn`` (a command that makes a run folder) with its ``geomed_ssl`` log records collected for
    :func:`attach_run_log`, and the error or stop that ends it written last; the handler goes when it returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handler = _install(RunLog())
        try:
            return fn(*args, **kwargs)
        except BaseException as err:
            if handler.fd is not None and not handler.disabled:
                with contextlib.suppress(Exception):
                    word = "stopped" if isinstance(err, (RunStopped, KeyboardInterrupt)) else "error"
                    handler.say(f"{word}: {message_of(err) or type(err).__name__}")
            raise
        finally:
            _uninstall(handler)
            handler.close()

    return wrapper  # type: ignore[return-value]


def say_in_run_log(text: str) -> None:
    """``text`` as a line of the log.txt of the run in progress only (not on the console); nothing without one."""
    if _ACTIVE and _ACTIVE[-1].fd is not None and not _ACTIVE[-1].disabled:
        with contextlib.suppress(OSError):
            _ACTIVE[-1].say(text)


def attach_run_log(folder: Path, resumed_at: int | None = None) -> None:
    """The run in progress writes its log to ``folder/log.txt`` from now on (see :class:`RunLog`); a log that cannot
    be written (read-only) is warned about and left out: it never stops a run."""
    if not _ACTIVE:
        return
    try:
        _ACTIVE[-1].attach(Path(folder) / LOG_FILE, resumed_at)
    except OSError as err:
        _ACTIVE[-1].disabled = True
        logging.getLogger("geomed_ssl").warning(f"warning: cannot write '{Path(folder) / LOG_FILE}' "
                                                f"({err.strerror or err}): this run keeps no log.txt.")


class WorkerRunLog(L.Callback):
    """Rank 0 of a ``ddp_spawn`` run trains in a fresh interpreter, where no run log is active: it appends its lines
    (steps, notes, warnings) to the log.txt the launching process made (when that is the toolkit's). A forked further
    rank (``ddp_fork``) drops the launcher's handler it inherited, so no line is written twice."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOG_FILE
        self.handler: RunLog | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        inherited = [h for h in _ACTIVE if h.pid != os.getpid()]
        if not trainer.is_global_zero and inherited:  # a forked further rank: the launcher's lines are rank 0's
            for handler in inherited:
                _uninstall(handler)
            logging.getLogger("geomed_ssl").setLevel(logging.ERROR)  # rank 0 says the notes (as pretrain has it)
            return
        if _ACTIVE or not trainer.is_global_zero or not ours(self.path):
            return
        try:
            fd = os.open(self.path, OPEN_FLAGS)
        except OSError:  # the launching process said so and keeps no log
            return
        self.handler = _install(RunLog())
        self.handler.fd = fd

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.handler is not None:
            _uninstall(self.handler)
            self.handler.close()
            self.handler = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "handler": None}  # the open file stays in its process
