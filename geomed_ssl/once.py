"""Notes and warnings said once per command, not once per process: a notebook that runs ``embed`` and then
``predict`` on the same files hears each warning in both. A module keeps what it has said in a set from
:func:`said_set`; every such set empties when a command begins (:func:`command_scope`, entered by
:func:`geomed_ssl.process.keeps_process_state` and by every CLI command), but not when a command runs inside another
(compare's fine-tunes, the demo's steps), so a compare of 30 fine-tunes still says each thing once."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

_SETS: list[set[Any]] = []
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("geomed_ssl_command_depth", default=0)  # per thread


def said_set() -> set[Any]:
    """An empty set, for a module's record of what it has said: emptied when a new command begins."""
    said: set[Any] = set()
    _SETS.append(said)
    return said


def forget_said() -> None:
    """Every :func:`said_set` emptied: what they hold is said again."""
    for said in _SETS:
        said.clear()


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Inside, one command: the outermost scope begins with :func:`forget_said`; nested ones change nothing. A
    command another thread starts is outermost in its own thread (the sets are shared: the first thread's command
    may then say a note again, never miss one)."""
    depth = _DEPTH.get()
    if depth == 0:
        forget_said()
    token = _DEPTH.set(depth + 1)
    try:
        yield
    finally:
        _DEPTH.reset(token)
