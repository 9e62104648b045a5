"""What a command called from Python leaves behind: nothing. Training seeds the global random generators (Lightning's
``seed_everything``, a reseed per step), exports ``PL_GLOBAL_SEED`` / ``PL_SEED_WORKERS`` and may size the thread
pool to a CPU quota; a notebook that runs ``pretrain`` and then its own experiments must not find its random numbers
fixed or its thread count changed. :func:`keeps_process_state` saves that state around a call and puts it back."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import threading
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Variables the training stack sets for its own processes: Lightning's seed for the workers it starts, the thread
# count sized to a CPU quota (geomed_ssl.cpus), what Lightning's ddp launcher (geomed_ssl.ranks.start_other_ranks)
# tells the ranks it starts (a second run in the process would otherwise take itself for one of those ranks).
ENV_KEYS = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "OMP_NUM_THREADS", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT")
# Loggers whose levels the console settings change (geomed_ssl.train.console.quiet_lightning; the package's own on a
# further rank of a multi-process run, which says nothing but errors).
LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "geomed_ssl")
# Handlers a run replaces while it trains (save-and-stop) and Lightning sets to "ignore" when it aborts.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ProcessState:
    """The random generators (Python, NumPy, torch CPU and initialised CUDA devices), ``ENV_KEYS``, torch's thread
    count, the levels of ``LOGGERS`` and the handlers of ``SIGNALS`` (main thread only) at one moment;
    :meth:`restore` puts them back."""

    def __init__(self) -> None:
        self.python = random.getstate()
        self.env = {key: os.environ.get(key) for key in ENV_KEYS}
        self.levels = {name: logging.getLogger(name).level for name in LOGGERS}
        main = threading.current_thread() is threading.main_thread()
        self.handlers = {s: signal.getsignal(s) for s in SIGNALS} if main else {}
        import numpy as np  # imported here, before the call, so that even their first states come back
        import torch

        self.numpy = np.random.get_state()
        self.torch, self.threads = torch.get_rng_state(), torch.get_num_threads()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        random.setstate(self.python)
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        for signum, handler in self.handlers.items():
            if handler is not None:  # None: set outside Python, which cannot be put back from here
                signal.signal(signum, handler)
        import numpy as np
        import torch

        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        elif torch.cuda.is_initialized():  # first used during the call, left seeded by it: a fresh random state
            torch.cuda.seed_all()


def keeps_process_state(fn: F) -> F:
    """``fn`` run between a :class:`ProcessState` saved before it and restored after it (also when it raises),
    inside ``warnings.catch_warnings`` (the filters it adds go with it), its output folders' locks let go after it
    (:mod:`geomed_ssl.outlocks`), as one command whose notes are said once (:mod:`geomed_ssl.once`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from geomed_ssl.outlocks import released_after

        from geomed_ssl.once import command_scope

        state = ProcessState()
        try:  # its output folders are free once it returns; its notes said once in it, again in the next command
            with warnings.catch_warnings(), released_after(), command_scope():
                return fn(*args, **kwargs)
        finally:
            state.restore()

    return wrapper  # type: ignore[return-value]


class _Terminated(BaseException):
    """SIGTERM, raised as a Ctrl-C raises KeyboardInterrupt, inside :func:`stops_as`."""




@contextlib.contextmanager
def stops_as(message: Callable[[str], str]) -> Any:
    """Inside, a Ctrl-C (KeyboardInterrupt) or a SIGTERM ends the block with ``RunStopped(name, message(name))``:
    the line saying what a stop there leaves and how to go on, and the shell's code (130, 143), for the phases a
    Lightning loop does not guard (fitting a probe head, the final evaluation, a scan before training). Inside
    ``trainer.fit``, once Lightning's handler is set it takes SIGTERM (a checkpoint at the next step) and calls this
    one after its own, which then stands aside; before that (strategy set-up, a resume's restore) it stops the block."""
    from geomed_ssl.errors import RunStopped

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    catch = previous not in (None, signal.SIG_IGN)  # a parent that ignores SIGTERM keeps it ignored

    def on_term(signum: int, frame: Any) -> None:
        # inside trainer.fit Lightning's handler calls this one after its own (a checkpoint, or its
        # SIGTERMException at the next step): only while this is the process's handler does it stop the block
        if signal.getsignal(signal.SIGTERM) is on_term:
            raise _Terminated()

    if catch:
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        raise RunStopped("SIGINT", message("SIGINT")) from None
    except _Terminated:
        raise RunStopped("SIGTERM", message("SIGTERM")) from None
    finally:
        if catch:
            signal.signal(signal.SIGTERM, previous)
