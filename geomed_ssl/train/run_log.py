"""``log.txt`` in a run folder: every note and warning a pretraining run said, and its step lines, with their time,
kept beside its metrics once the terminal is gone (rank 0 only). What is said before the folder exists (the
catalog, the survey of the data) is held and written first; a resumed run appends to it under a line saying so."""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from geomed_ssl.errors import RunStopped, message_of
from geomed_ssl.outfiles import atomic_write_text

F = TypeVar("F", bound=Callable[..., Any])
LOG_FILE = "log.txt"
MAX_HELD = 10_000  # lines held before the folder exists (a folder of many problem files says one line each)
_ACTIVE: list["RunLog"] = []  # the handler of the run in progress in this process (innermost last)


class RunLog(logging.Handler):
    """The package's log records as lines, held until :meth:`attach` names the file, then appended to it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.held: list[str] = []
        self.fd: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.say(record.getMessage(), record.created)
        except Exception:  # a log line never stops a run (a full disk is said by the checkpoint that follows)
            self.handleError(record)

    def say(self, text: str, created: float | None = None) -> None:
        """One line (``text`` after its time), held or appended."""
        when = datetime.datetime.fromtimestamp(created or time.time()).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{when}  {text}\n"
        if self.fd is None:
            if len(self.held) < MAX_HELD:
                self.held.append(line)
        else:
            os.write(self.fd, line.encode())

    def attach(self, path: Path, resumed_at: int | None) -> None:
        """Write the lines held so far to ``path`` (a new file, whole; a resumed run's: appended after a line
        saying so) and append every later one."""
        from geomed_ssl._version import __version__

        if resumed_at is not None and path.is_file():
            text = f"--- resumed from step {resumed_at} (geomed-ssl {__version__}) ---\n" + "".join(self.held)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(self.fd, text.encode())
        else:
            atomic_write_text(path, f"--- geomed-ssl {__version__} ---\n" + "".join(self.held))
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.held = []

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()


def keeps_run_log(fn: F) -> F:
    """``fn`` (a command that makes a run folder) with its ``geomed_ssl`` log records collected for
    :func:`attach_run_log`, and the error or stop that ends it written last; the handler goes when it returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handler, logger = RunLog(), logging.getLogger("geomed_ssl")
        logger.addHandler(handler)
        _ACTIVE.append(handler)
        try:
            return fn(*args, **kwargs)
        except BaseException as err:
            if handler.fd is not None:
                with contextlib.suppress(Exception):
                    word = "stopped" if isinstance(err, (RunStopped, KeyboardInterrupt)) else "error"
                    handler.say(f"{word}: {message_of(err) or type(err).__name__}")
            raise
        finally:
            _ACTIVE.remove(handler)
            logger.removeHandler(handler)
            handler.close()

    return wrapper  # type: ignore[return-value]


def say_in_run_log(text: str) -> None:
    """``text`` as a line of the log.txt of the run in progress only (not on the console); nothing without one."""
    if _ACTIVE and _ACTIVE[-1].fd is not None:
        with contextlib.suppress(OSError):
            _ACTIVE[-1].say(text)


def attach_run_log(folder: Path, resumed_at: int | None = None) -> None:
    """The run in progress writes its log to ``folder/log.txt`` from now on (see :class:`RunLog`)."""
    if _ACTIVE:
        _ACTIVE[-1].attach(Path(folder) / LOG_FILE, resumed_at)
