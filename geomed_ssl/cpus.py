"""How many CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota (a container's
``docker --cpus`` or Kubernetes limit, ``systemd-run -p CPUQuota``), which the mask does not show; and how much memory
the machine has (``physical_memory``).

Read from the cgroup files themselves, not with joblib's count, which says 1 when joblib cannot use multiprocessing
and follows ``LOKY_MAX_CPU_COUNT`` (a scikit-learn setting); a fractional quota rounds down, as Go's automaxprocs
does (1.5 CPUs: one)."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """The CPUs this process may use: the affinity mask, at most the cgroup quota (at least 1)."""
    cpus = visible_cpus()
    quota = cgroup_cpu_limit()
    return min(cpus, quota) if quota is not None else cpus


_exported: str | None = None  # the OMP_NUM_THREADS this process set itself (a later, finer fit may change it)


def fit_threads_to_quota(processes: int = 1) -> int | None:
    """Under a cgroup CPU quota below the affinity mask, size torch's thread pool to the quota shared by this node's
    ``processes`` training processes, and export ``OMP_NUM_THREADS`` so Lightning (which sizes it from the mask) and
    the processes it starts keep that. torch sizes its pool from the mask, so in a container with a quota (a
    Kubernetes notebook) it runs more threads than it has CPUs and they stall each other. A value the user set is
    left alone. Returns the new size, or None when nothing changed."""
    global _exported
    chosen = os.environ.get("OMP_NUM_THREADS")
    if chosen is not None and chosen != _exported:
        return None
    cpus = usable_cpus()
    if cpus >= visible_cpus():  # no quota below the mask: nothing to import or change
        return None
    threads = str(max(1, cpus // max(1, processes)))
    if threads == chosen:
        return None
    import torch

    torch.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = _exported = threads
    return int(threads)


def visible_cpus() -> int:
    """The CPUs the affinity mask shows (what torch and the OS scheduler see)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> int | None:
    """The CPUs the tightest CPU quota on this process's cgroup or its ancestors grants, rounded down (at least 1);
    None without a quota or off Linux. cgroup v2: ``cpu.max``; v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    ``membership``: the text of ``/proc/self/cgroup`` (read when None)."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if hierarchy == "0" and not controllers:
            bases, read = [root, root / "unified"], _v2_quota
        elif "cpu" in controllers.split(","):
            bases, read = [root / controllers, root / "cpu"], _v1_quota
        else:
            continue
        for base in bases:
            folder = base / group.strip("/")
            while True:  # the group, then its ancestors up to the mount (a container's mount is its own group)
                quota = read(folder)
                if quota is not None:
                    limits.append(max(1, int(quota)))
                if folder == base:
                    break
                folder = folder.parent
    return min(limits) if limits else None


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def physical_memory(default: int = 16 * 2**30) -> int:
    """This machine's memory in bytes (``default`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return default
