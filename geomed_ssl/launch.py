"""Whether a cluster launcher started this process as one of several (torchrun, ``srun -n N``), and what the
commands do about it.

``pretrain`` is the only command that trains across processes: it runs when the recipe's ``train.devices`` x
``train.num_nodes`` equals the launcher's process count, and is refused on every rank otherwise (each process would
train its own copy into one run folder). Every other command runs once, in the launcher's rank 0; the other ranks
say so and exit 0 (a rank that failed would make torchrun stop rank 0 mid-run)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes a launcher started."""

    rank: int
    world: int
    launcher: str


_alone = False  # set in rank 0 of a one-process command: the other ranks left, so its own runs are one process


def set_alone(flag: bool) -> None:
    """Whether this process now runs alone whatever the launcher's variables say (see :func:`runs_here`)."""
    global _alone
    _alone = flag


def launched() -> Launch | None:
    """This process's rank among several that torchrun or another launcher (``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK``) or ``srun`` (``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS``, set in a job step, not in the batch
    script) started; None when it runs alone."""
    env = os.environ
    if _alone:
        return None
    if {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= env.keys():  # Lightning's own ddp ranks have no RANK
        found = Launch(_int(env["RANK"]), _int(env["WORLD_SIZE"], 1),
                       "torchrun" if "TORCHELASTIC_RUN_ID" in env else "the launcher")
    elif {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS"} <= env.keys():
        found = Launch(_int(env["SLURM_PROCID"]), _int(env["SLURM_STEP_NUM_TASKS"], 1), "srun")
    else:
        return None
    return found if found.world > 1 else None


def further_rank() -> bool:
    """Whether this process is a rank other than 0 of a multi-process run: one torchrun or ``srun`` started
    (:func:`launched`), or one Lightning's ``ddp`` strategy started beside rank 0 (``LOCAL_RANK`` / ``NODE_RANK``
    with the process group's address)."""
    env = os.environ
    if (found := launched()) is not None:
        return found.rank != 0
    return "MASTER_PORT" in env and (_int(env.get("LOCAL_RANK", "0")) != 0 or _int(env.get("NODE_RANK", "0")) != 0)


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")  # start their own worker processes


def check_pretrain_world(trainer_world: int, strategy: str = "ddp") -> None:
    """A ``ConfigError`` when a launcher started several processes but the recipe trains ``trainer_world``
    (``train.devices`` x ``train.num_nodes``) of another count, or with a strategy that would start workers of its
    own in each of them: the same on every rank, before anything is written."""
    found = launched()
    if found is None:
        return
    from geomed_ssl.errors import ConfigError

    if str(strategy).startswith(SPAWNING_STRATEGIES):
        raise ConfigError(f"{found.launcher} started {found.world} processes itself (this is rank {found.rank}), "
                          f"but train.strategy={strategy} would start more workers inside each of them; use "
                          f"train.strategy=ddp (or auto) under {found.launcher}.")
    if found.world == trainer_world:
        return
    raise ConfigError(f"{found.launcher} started {found.world} processes (this is rank {found.rank}), but the "
                      f"recipe trains with train.devices x train.num_nodes = {trainer_world}, so they would not "
                      f"train one run together; set train.devices to the processes per node and train.num_nodes "
                      f"to the nodes (train.strategy=ddp), or start one process.")


def check_master_port() -> None:
    """A ``ConfigError`` naming ``MASTER_PORT`` when it is set but no port number (the process group's address
    would fail later with a traceback)."""
    port = os.environ.get("MASTER_PORT")
    if port is None or (port.strip().isdigit() and 0 < int(port) < 65536):
        return
    from geomed_ssl.errors import ConfigError

    raise ConfigError(f"MASTER_PORT={port!r} is not a port number: set it to a free TCP port (1-65535) of the "
                      "first node, the same on every node, or unset it for one machine.")


def check_node_rank(rank: int, world: int, nodes: int) -> None:
    """A ``ConfigError`` when this process's global rank lies outside the run (a node started with a NODE_RANK,
    or a train.num_nodes, other than the run's): it would crash in the process group, and the others would wait
    for it until the group's timeout."""
    if rank < world:
        return
    from geomed_ssl.errors import ConfigError

    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "?"))
    raise ConfigError(f"this process is rank {rank} (node rank {node}) of a run of {world} process(es) "
                      f"(train.devices x train.num_nodes, here train.num_nodes={nodes}): start every node with the "
                      "same train.num_nodes and train.devices, and node ranks 0 to train.num_nodes - 1.")


def runs_here(command: str) -> bool:
    """Whether a command that runs in one process (every command but ``pretrain``) runs in this one: always when
    no launcher started several, else in rank 0 only; the others print why they leave (rank 0 warns too)."""
    import logging

    found = launched()
    if found is None:
        return True
    log = logging.getLogger("geomed_ssl")
    if found.rank == 0:
        log.warning(f"{command} runs in one process: {found.launcher} started {found.world}, rank 0 does the "
                    "work and the others exit.")
        set_alone(True)  # what it runs itself (the demo's pretraining) is then a one-process run
        return True
    log.warning(f"{command} runs in one process, in rank 0 of the {found.world} that {found.launcher} started; "
                f"rank {found.rank} has nothing to do and exits.")
    return False
