"""How many CPUs this process may use, and torch's thread count kept within them.

Inside a container whose CPU quota (``docker --cpus``, a Kubernetes limit) is below the host's cores, the affinity
mask still shows every host core, and torch starts one thread per core it sees: the threads then wait on each other
while the kernel throttles the container. joblib's count (already installed with scikit-learn) takes the minimum of
the affinity mask, the cgroup v1 / v2 quota (rounded up) and ``LOKY_MAX_CPU_COUNT``."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("geomed_ssl")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """The CPUs this process may use: affinity mask, container CPU quota and ``LOKY_MAX_CPU_COUNT`` (at least 1)."""
    from joblib import cpu_count

    return cpu_count()


def visible_cpus() -> int:
    """The CPUs the affinity mask shows (what torch and OpenMP see)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def limit_threads_to_quota() -> int | None:
    """Before torch is imported: where a CPU quota allows fewer CPUs than the process sees, set ``OMP_NUM_THREADS``
    and ``MKL_NUM_THREADS`` to the quota's count, unless the user set either or torch is already loaded (its pool is
    sized then). Returns the count set, else None."""
    if any(v in os.environ for v in THREAD_VARIABLES) or "torch" in sys.modules:
        return None
    cpus, seen = usable_cpus(), visible_cpus()
    if cpus >= seen:
        return None
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(cpus)
    log.info(f"{cpus} of the {seen} CPUs this process sees are usable (a container CPU quota): torch uses {cpus} "
             f"threads (set OMP_NUM_THREADS to choose).")
    return cpus
