"""Ranks agree before rank 0 writes: every check passed on every rank, and one resume checkpoint for all.

How the processes of a run come to exist decides how they agree (:func:`agreement_for`):

- one process, or ``ddp_spawn`` / ``ddp_fork`` (the launching process checks everything, then starts its
  workers inside ``trainer.fit``, handing them its checkpoint): nothing to agree on;
- ``ddp`` started by Lightning (``--set train.strategy=ddp``): the command's process is rank 0; it checks
  everything and only then starts the other ranks (inside ``trainer.fit``), handing them its checkpoint choice in
  the environment (:data:`RESUME_ENV`); a rank that fails later makes Lightning stop the others. On each further
  node of a hand-started multi-node run the command's process is that node's first rank: it cannot hear rank 0
  before the process group exists, so it chooses the checkpoint by the same rule on the shared run folder and hands
  it to its node's ranks (a failure there leaves the other nodes waiting for Lightning's process-group timeout:
  start the ranks with torchrun / srun instead to have it stop them all);
- processes started by the cluster (torchrun, SLURM, MPI, ...: every rank runs the command at once): the process
  group is set up early (as Lightning would, which then reuses it) and the ranks exchange, over a side group with a
  :data:`TIMEOUT`, whether each passed its checks (the first failure's message reaches every rank, which all stop at
  once instead of waiting 30 minutes for the group) and rank 0's checkpoint path; then, in rounds of their own
  (:meth:`Agreement.round`), whether the checks that need the data passed on every rank, and last whether rank 0
  made and wrote the run folder.

Only strings and flags travel, as uint8 / int64 tensors (nothing is pickled).
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any, Iterator

import torch

from geomed_ssl.errors import GeomedError

RESUME_ENV = "GEOMED_SSL_RESUME_FROM"  # rank 0's checkpoint choice for the ranks Lightning starts ("" : none)
TIMEOUT = timedelta(minutes=10)  # a rank that has not reported by then has died: the others stop


class Agreement:
    """One process alone (or a launcher that decides for the processes it starts): nothing to exchange."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    @property
    def chooses(self) -> bool:
        """Whether this process picks the checkpoint to resume from (else it takes rank 0's)."""
        return self.rank == 0

    def failed(self, err: Exception) -> None:
        """This rank failed its checks with ``err`` (the caller re-raises it): the other ranks learn it."""

    def share_checkpoint(self, checkpoint: str | None) -> str | None:
        """Rank 0's ``checkpoint`` to resume from (None: none) on every rank, once rank 0 passed its checks."""
        return checkpoint

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


class LauncherAgreement(Agreement):
    """The process that starts this node's other ranks inside ``trainer.fit`` (Lightning's ``ddp``): they start
    only after its checks passed, and take its checkpoint choice from the environment."""

    @property
    def chooses(self) -> bool:
        return True  # rank 0, or the first rank of another node, which cannot ask rank 0 yet

    def share_checkpoint(self, checkpoint: str | None) -> str | None:
        os.environ[RESUME_ENV] = checkpoint or ""  # inherited by the ranks trainer.fit starts
        return checkpoint


class ChildAgreement(Agreement):
    """A rank Lightning started once its launcher passed its checks: it takes the launcher's checkpoint (a rank
    that fails later makes Lightning stop the others)."""

    def share_checkpoint(self, checkpoint: str | None) -> str | None:
        return os.environ[RESUME_ENV] or None


class GroupAgreement(Agreement):
    """Ranks the cluster started together: they exchange their outcome over a gloo side group."""

    def __init__(self, rank: int, world: int, group: Any) -> None:
        super().__init__(rank)
        self.world, self.group = world, group

    def failed(self, err: Exception) -> None:
        text = str(err).splitlines()[0] if str(err) else ""
        self._exchange(text if isinstance(err, GeomedError) else f"{type(err).__name__}: {text}")
        self._close()

    def share_checkpoint(self, checkpoint: str | None) -> str | None:
        return self._exchange(None, checkpoint or "") or None

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
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        failed = [r for r, f in enumerate(flags.tolist()) if f]
        src = failed[0] if failed else 0
        message = broadcast_text((failure or "") if failed else text, src, self.group)
        if failed and failure is None:  # this rank passed: it stops with the failing rank's reason
            self._close()
            raise GeomedError(f"rank {src} of the run failed, so every rank stops: {message}")
        return message

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


def agreement_for(probe: Any) -> Agreement:
    """How the processes of the run ``probe`` (a Trainer with its settings) agree; see the module docstring."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    rank, world, strategy = probe.global_rank, probe.world_size, probe.strategy
    if world == 1 or isinstance(strategy.launcher, _MultiProcessingLauncher):
        return Agreement(rank)
    env = strategy.cluster_environment
    if not env.creates_processes_externally:  # Lightning's ddp starts this node's other ranks inside trainer.fit
        return LauncherAgreement(rank)
    if isinstance(env, LightningEnvironment) and RESUME_ENV in os.environ:  # one of those ranks
        return ChildAgreement(rank)
    return GroupAgreement(rank, world, early_process_group(strategy))


def early_process_group(strategy: Any) -> Any:
    """Set up the default process group as Lightning's DDP strategy will (it then finds it ready), and a gloo side
    group with :data:`TIMEOUT` for the agreement."""
    import torch.distributed as dist
    from lightning.fabric.utilities.distributed import _init_dist_connection

    kwargs: dict[str, Any] = {"timeout": getattr(strategy, "_timeout", None) or timedelta(minutes=30)}
    if strategy.root_device.type != "cpu":
        kwargs["device_id"] = strategy.root_device
    _init_dist_connection(strategy.cluster_environment, strategy._get_process_group_backend(), **kwargs)
    return dist.new_group(backend="gloo", timeout=TIMEOUT)
