"""How many CPU cores this process may really use, and the default DSP worker count from it.

``os.cpu_count()`` counts the host's cores: in a 2-CPU container on a 128-core host it says
128. What the process may use is bounded twice: by its CPU affinity (``taskset``, cpusets:
``os.sched_getaffinity``) and by a CFS bandwidth quota (docker ``--cpus``, Kubernetes limits:
cgroup v2 ``cpu.max``, or cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU_DIR = Path("/sys/fs/cgroup/cpu")
MAX_DEFAULT_WORKERS = 2   # measured: thread workers stop scaling at 2 on 16 cores (docs/operations.md); the cap rises with the processes mode


def _affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_quota_cores(cpu_max: Path = CGROUP_V2_CPU_MAX, v1_dir: Path = CGROUP_V1_CPU_DIR) -> float | None:
    """Cores allowed by the cgroup CPU quota (quota / period, may be fractional); None = no quota.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000"), else cgroup v1's
    ``cpu.cfs_quota_us`` (-1 = none) and ``cpu.cfs_period_us``. An unreadable or malformed
    file counts as no quota: the affinity bound still applies.
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period) if int(period) > 0 and int(quota) > 0 else None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((v1_dir / "cpu.cfs_quota_us").read_text())
        period_us = int((v1_dir / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores(cpu_max: Path = CGROUP_V2_CPU_MAX, v1_dir: Path = CGROUP_V1_CPU_DIR) -> int:
    """Cores this process may run on at once: min(affinity, ceil(cgroup quota)), at least 1."""
    cores = _affinity_cores()
    quota = cgroup_quota_cores(cpu_max, v1_dir)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def default_dsp_workers(cpu_max: Path = CGROUP_V2_CPU_MAX, v1_dir: Path = CGROUP_V1_CPU_DIR,
                        cap: int = MAX_DEFAULT_WORKERS) -> int:
    """DSP workers when ``dsp.workers = 0``: usable cores - 1 (one for acquisition, sequencer and
    publisher), at least 1, at most ``cap``."""
    return max(1, min(usable_cores(cpu_max, v1_dir) - 1, cap))
