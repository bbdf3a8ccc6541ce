"""CPU threads for torch: as many as the CPUs this process may use (its affinity mask and its
cgroup's CPU quota, not the machine's core count), and OpenMP threads that sleep when idle.

Why (docs/PERFORMANCE.md, bench/concurrency.py): two trainings started at once on a 2-core
machine each ran 2 OpenMP threads that spin while waiting for work (GNU OpenMP's default
wait policy), so each process's idle threads burned the cores the other needed: epochs went
15-60x slower instead of 2x. With passive waiting an idle thread sleeps and the cores are
shared fairly. The wait policy is read once, when torch loads OpenMP, so entry points call
`before_torch()` before anything imports torch."""
import math
import os
from pathlib import Path

WAIT_POLICY = "PASSIVE"


def before_torch() -> None:
    """Set OpenMP's wait policy before torch (and its OpenMP runtime) is loaded; a value the
    user set in the environment wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (v2 cpu.max, v1 cfs quota); None: no quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def default_threads(processes_here: int = 1) -> int:
    """Threads per process when `processes_here` of ours share this machine (torchrun's
    LOCAL_WORLD_SIZE): the available CPUs divided among them."""
    return max(1, available_cpus() // max(1, processes_here))


def configure_threads(threads: int | None = None) -> int:
    """torch's intra-op threads: `threads`, else default_threads() for this process (torchrun's
    local processes share the CPUs). -> the count set."""
    import torch
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    count = threads or default_threads(local)
    torch.set_num_threads(count)
    return count
