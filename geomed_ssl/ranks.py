"""Ranks agree before rank 0 writes: every check passed on every rank, every rank read the same inputs, and one
resume checkpoint for all (:func:`agreement_for`).

One process, or ``ddp_spawn`` / ``ddp_fork`` (the launching process checks everything before ``trainer.fit`` starts
its workers): nothing to agree on. Otherwise every rank runs the command at once: started by the cluster (torchrun,
SLURM, MPI, ...), or, under Lightning's ``ddp``, by the command's process before any check
(:func:`start_other_ranks`; ``trainer.fit`` would start them only after rank 0 made the run folder). The process
group is set up early (as Lightning would, which then reuses it) and the ranks exchange, over a side group with a
:data:`TIMEOUT`, whether each passed its checks (the first failure's message reaches every rank, which all stop at
once instead of waiting 30 minutes for the group) and rank 0's checkpoint path; then, in rounds of their own
(:meth:`Agreement.round`), whether every rank read the same recipe and data files (:meth:`Agreement.same_inputs`)
and passed the checks that need them, and last whether rank 0 made and wrote the run folder. Only strings and
flags travel, as uint8 / int64 tensors (nothing is pickled).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch

from geomed_ssl.errors import GeomedError

TIMEOUT = timedelta(minutes=10)  # a rank that has not reported by then has died: the others stop


class Agreement:
    """One process alone (or a launcher that decides for the processes it starts): nothing to exchange."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def failed(self, err: Exception) -> None:
        """This rank failed its checks with ``err`` (the caller re-raises it): the other ranks learn it."""

    def share_checkpoint(self, checkpoint: str | None) -> str | None:
        """Rank 0's ``checkpoint`` to resume from (None: none) on every rank, once rank 0 passed its checks."""
        return checkpoint

    def same_inputs(self, digest: str) -> None:
        """Every rank read the inputs rank 0 read (``digest``: :func:`~geomed_ssl.files.listing.inputs_digest`),
        else a ``GeomedError`` on the rank that read others (inside a round: every rank then stops)."""

    def all_passed(self, last: bool = True) -> None:
        """Every rank passed every check (else a ``GeomedError`` naming the first rank that failed, and why);
        ``last``: no round follows."""

    @contextlib.contextmanager
    def told(self) -> Iterator[None]:
        """A failure inside (a stop too) is told to the other ranks before it goes on (:meth:`failed`)."""
        try:
            yield
        except BaseException as err:
            with contextlib.suppress(Exception):
                self.failed(err)
            raise

    @contextlib.contextmanager
    def round(self, last: bool = True) -> Iterator[None]:
        """One more round: what runs inside (every rank's checks; then, in the last round, rank 0 making the run
        folder and writing its files) either fails on some rank, which every rank then learns (:meth:`told`), or
        passes on all, as :meth:`all_passed` says."""
        with self.told():
            yield
        self.all_passed(last)


class GroupAgreement(Agreement):
    """Ranks that run the command at once (the cluster's, or those :func:`start_other_ranks` started: ``started``,
    waited for when the checks fail): they exchange their outcome over a gloo side group."""

    def __init__(self, rank: int, world: int, group: Any, started: Sequence[Any] = ()) -> None:
        super().__init__(rank)
        self.world, self.group, self.started = world, group, list(started)

    def failed(self, err: Exception) -> None:
        if self.group is None:  # closed: the failure was another rank's, heard (or every round is over)
            return
        text = str(err).splitlines()[0] if str(err) else ""
        self._exchange(text if isinstance(err, GeomedError) else f"{type(err).__name__}: {text}")
        self._close()
        self._end_started()

    def share_checkpoint(self, checkpoint: str | None) -> str | None:
        return self._exchange(None, checkpoint or "") or None

    def same_inputs(self, digest: str) -> None:
        if self._exchange(None, digest) != digest:
            raise GeomedError(f"rank {self.rank} read other inputs than rank 0: the recipe with its --set values, "
                              "or the data folder's files (one changed, added or removed while the ranks started, or "
                              "another node sees other files). Every node must run the same command on the same "
                              "data; start the run again once they do. (A Python script runs one ddp pretraining: "
                              "its other ranks run the script again from the top.)")

    def all_passed(self, last: bool = True) -> None:
        self._exchange(None)
        if last:
            self._close()

    def _exchange(self, failure: str | None, text: str = "") -> str:
        """Every rank's flag (failed or not), then one string: the first failed rank's message (raised on the
        ranks that passed) or rank 0's ``text``."""
        import torch.distributed as dist

        flags = torch.zeros(self.world, dtype=torch.int64)
        flags[self.rank] = int(failure is not None)
        try:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
            failed = [r for r, f in enumerate(flags.tolist()) if f]
            src = failed[0] if failed else 0
            message = broadcast_text((failure or "") if failed else text, src, self.group)
        except RuntimeError:  # a rank ended without reporting (killed, crashed): its connection closed
            with contextlib.suppress(Exception):
                self._close()
            self.group = None
            self._end_started()
            raise GeomedError("a rank of the run stopped without reporting (killed or crashed; its output is above), "
                              "so every rank stops.") from None
        if failed and failure is None:  # this rank passed: it stops with the failing rank's reason
            self._close()
            self._end_started()
            raise GeomedError(f"rank {src} of the run failed, so every rank stops: {message}")
        return message

    def _end_started(self) -> None:
        """Wait for the ranks this process started, which heard why every rank stops, to say it and end."""
        for proc in self.started:
            try:
                proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - hung: stopped
                proc.kill()

    def _close(self) -> None:
        import torch.distributed as dist

        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None


def broadcast_text(text: str, src: int, group: Any) -> str:
    """``text`` of rank ``src`` on every rank of ``group`` (its length, then its UTF-8 bytes)."""
    import torch.distributed as dist

    data = torch.tensor(list(text.encode()), dtype=torch.uint8) if dist.get_rank() == src else None
    size = torch.tensor([0 if data is None else data.numel()], dtype=torch.int64)
    dist.broadcast(size, src, group=group)
    buf = data if data is not None else torch.empty(int(size.item()), dtype=torch.uint8)
    if buf.numel():
        dist.broadcast(buf, src, group=group)
    return bytes(buf.tolist()).decode()


def agreement_for(probe: Any, started: Sequence[Any] = ()) -> Agreement:
    """How the processes of the run ``probe`` (a Trainer with its settings) agree; see the module docstring.
    Lightning's ``ddp`` ranks must have been started first (:func:`start_other_ranks`: ``started``)."""
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    rank, world, strategy = probe.global_rank, probe.world_size, probe.strategy
    if world == 1 or isinstance(strategy.launcher, _MultiProcessingLauncher):
        return Agreement(rank)
    group = early_process_group(strategy)
    if isinstance(started, StartedRanks):
        started.connected()
    return GroupAgreement(rank, world, group, started)


class StartedRanks(list):
    """The processes :func:`start_other_ranks` started, watched until the ranks connect: one that ends before (it
    could not read the recipe, crashed on start) stops this process with one line, which would otherwise wait for
    the process group's 30-minute timeout; nothing is written before they connect."""

    def __init__(self, procs: Sequence[Any], first_rank: int) -> None:
        super().__init__(procs)
        self._connected, self.observer = threading.Event(), None
        threading.Thread(target=self._watch, args=(first_rank,), daemon=True, name="geomed-ssl-ranks").start()

    def connected(self) -> None:
        self._connected.set()

    def _watch(self, first_rank: int) -> None:
        while not self._connected.wait(0.5):
            ended = [(first_rank + i, p.returncode) for i, p in enumerate(self, start=1) if p.poll() is not None]
            if ended and not self._connected.is_set():
                sys.stderr.write(f"error: rank {ended[0][0]} of the run ended (exit code {ended[0][1]}) before the "
                                 "ranks connected; its message is above. Every rank stops.\n")
                sys.stderr.flush()
                for proc in self:
                    if proc.poll() is None:
                        proc.kill()
                os._exit(2)


def end_other_ranks(procs: Sequence[Any], timeout: float = 60.0) -> None:
    """After the run, wait for the ranks :func:`start_other_ranks` started to end (a script's further rank that
    goes on to another run is stopped after ``timeout`` s: it would wait for a rank 0 that is gone), no longer
    watched (:func:`watch_other_ranks`: a rank stopped here must not stop this process)."""
    watcher = getattr(procs, "observer", None)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - still running: stopped
            if watcher is not None:
                watcher._child_processes = []  # its next look finds none to watch, and ends
            proc.kill()


def start_other_ranks(probe: Any, before: Callable[[], None] | None = None) -> list[Any]:
    """Under Lightning's ``ddp`` started from the command (not by a cluster), start this node's other ranks now, as
    ``trainer.fit`` would (which then finds them started), once ``before`` (this process's own checks that need no
    other rank) passed; the processes started (:class:`StartedRanks`; none otherwise)."""
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = probe.strategy.launcher
    env = getattr(launcher, "cluster_environment", None)
    if probe.world_size == 1 or not isinstance(launcher, _SubprocessScriptLauncher) or env.creates_processes_externally:
        return []
    env.validate_settings(num_devices=launcher.num_processes, num_nodes=launcher.num_nodes)
    if before is not None:
        before()
    launcher._call_children_scripts()
    return StartedRanks(launcher.procs, probe.global_rank)


def watch_other_ranks(trainer: Any, procs: list[Any]) -> None:
    """Hand the ranks :func:`start_other_ranks` started to ``trainer``'s launcher (which passes signals on to them)
    and have Lightning watch them (one that dies stops every rank), as when ``trainer.fit`` starts them."""
    if not procs:
        return
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    trainer.strategy.launcher.procs = list(procs)
    observer = _ChildProcessObserver(child_processes=list(procs), main_pid=os.getpid())
    observer.start()
    if isinstance(procs, StartedRanks):
        procs.observer = observer


def early_process_group(strategy: Any) -> Any:
    """Set up the default process group as Lightning's DDP strategy will (it then finds it ready), and a gloo side
    group with :data:`TIMEOUT` for the agreement; an earlier run's group left in this process (a script's second
    run) is ended first, as its ranks are gone."""
    import torch.distributed as dist
    from lightning.fabric.utilities.distributed import _init_dist_connection

    if dist.is_initialized():
        dist.destroy_process_group()
    timeout = getattr(strategy, "_timeout", None) or timedelta(minutes=30)
    kwargs: dict[str, Any] = {"timeout": timeout}
    if strategy.root_device.type != "cpu":
        kwargs["device_id"] = strategy.root_device
    env = strategy.cluster_environment
    with waiting_for_ranks(env, timeout):
        try:
            _init_dist_connection(env, strategy._get_process_group_backend(), **kwargs)
        except (dist.DistNetworkError, dist.DistStoreError) as err:  # the store; a backend's (NCCL) error goes on
            raise GeomedError(connect_failure(env, str(err))) from None
        return dist.new_group(backend="gloo", timeout=TIMEOUT)


def connect_failure(env: Any, error: str) -> str:
    """One line on why the ranks did not connect, from torch's store error: the port taken on the first node, the
    others never arriving (seen from rank 0), or the first process gone or unreachable (seen from another rank)."""
    rank, world, where = env.global_rank(), env.world_size(), f"{env.main_address}:{env.main_port}"
    said = error.strip().splitlines()[0][:200] if error.strip() else "no reason given"
    if "EADDRINUSE" in error or "address already in use" in error.lower():
        why = f"port {env.main_port} is in use on this node: set another free MASTER_PORT, the same on every node"
    elif rank == 0:
        why = (f"the other {world - 1} process(es) did not connect: a node not started, or started with another "
               "MASTER_ADDR / MASTER_PORT / train.num_nodes")
    else:
        why = "the first process stopped, or that address cannot be reached from here"
    return (f"rank {rank} of the run could not connect to the others at {where} ({said}): {why}; nothing was "
            "written, start the run again on every node.")


NOTE_AFTER_S = 15.0  # ranks connect in a second or two when all of them are started


@contextlib.contextmanager
def waiting_for_ranks(env: Any, timeout: timedelta, note_after: float = NOTE_AFTER_S) -> Iterator[None]:
    """While the ranks connect (torch waits inside C++ code, where Python's signal handlers never run): SIGTERM and
    Ctrl-C end the process at once (nothing is written before the ranks agree), and a rank still waiting after
    ``note_after`` s says what for, once: a node that was never started, or a wrong address, leaves it waiting for
    the process group's timeout."""
    import signal

    rank, world = env.global_rank(), env.world_size()
    note = threading.Timer(note_after, lambda: _say(
        f"rank {rank} of the run is waiting for the others of its {world} processes to connect at "
        f"{env.main_address}:{env.main_port} (up to {timeout.total_seconds() / 60:g} minutes): start the command on "
        "every node (with its NODE_RANK, the same MASTER_ADDR / MASTER_PORT and train.num_nodes); Ctrl-C stops it."))
    note.daemon = True
    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    for sig in saved:
        signal.signal(sig, signal.SIG_DFL)
    note.start()
    try:
        yield
    finally:
        note.cancel()
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


def _say(text: str) -> None:
    sys.stderr.write(f"note: {text}\n")
    sys.stderr.flush()
