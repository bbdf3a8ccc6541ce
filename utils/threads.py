"""CPU threads for torch: as many as the CPUs this process may use (its affinity mask and its
cgroup's CPU quota, not the machine's core count), and OpenMP threads that spin only briefly
when they run out of work, then sleep.

Why (docs/PERFORMANCE.md, bench/concurrency.py): GNU OpenMP's threads spin for a long while
(300,000 turns) before they sleep, waiting for the next parallel region. When two trainings
share two cores, each process's spinning threads burn the time slices the other process's
working threads need: epochs ran 4-42x slower than alone (measured). Sleeping at once
(OMP_WAIT_POLICY=PASSIVE) shares the cores fairly but makes a run alone 1.5x slower with tiny
models, whose many small operations pay the wake-up each time; a short spin (1,000 turns)
keeps a run alone as fast as before and two runs at 1.8x. The spin count is read once, when
torch loads OpenMP, so entry points call `before_torch()` before anything imports torch."""
import math
import os
from pathlib import Path

SPIN_COUNT = "1000"   # GNU OpenMP (GOMP_SPINCOUNT): turns of busy waiting before a thread sleeps
BLOCK_TIME_MS = "1"   # the same for Intel/LLVM OpenMP (KMP_BLOCKTIME), milliseconds


def before_torch() -> None:
    """Set OpenMP's spin-then-sleep waiting before torch (and its OpenMP runtime) is loaded. A
    wait policy or spin count the user set in the environment wins."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
        os.environ.setdefault("KMP_BLOCKTIME", BLOCK_TIME_MS)


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
