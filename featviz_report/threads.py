"""How many cores a build may use, and torch's intra-op threads held to that while it runs.

``os.cpu_count()`` counts the machine, not what this process may use: in a container limited to 2 CPUs
on a 64-core host, or under ``taskset``, torch's 64 OpenMP threads and 64 PNG encoder threads would
fight over 2 cores. :func:`available_cores` takes the CPU affinity and the cgroup quota, less the cores
other processes keep busy right now (``/proc/loadavg``'s runnable count, read three times, the least
kept). OpenMP threads spin while they wait, so a core taken by another process slows every parallel
region that counts on it: resnet18 × 8 with one core busy took 1.49 s with 2 torch threads and 1.33 s
with 1 (2 cores, quiet: 0.78 s with 2, 1.08 s with 1). The PNG encoder keeps one thread per allowed core:
Pillow releases the GIL while compressing and its threads block rather than spin.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["allowed_cores", "available_cores", "torch_threads"]


def allowed_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def available_cores() -> int:
    """Allowed cores less those other processes keep busy now (Linux; elsewhere the allowed ones)."""
    readings = []
    for _ in range(3):
        readings.append(_busy_elsewhere())
        time.sleep(0.001)
    return max(1, allowed_cores() - min(readings))


def _busy_elsewhere() -> int:
    """Runnable tasks other than the thread asking (``/proc/loadavg``'s 4th field counts it too)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, running - 1)


def _cgroup_quota() -> int | None:
    """Whole cores a cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us``) allows, or None without a limit."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads at most ``count`` inside the block, as they were after it."""
    import torch  # here, so the encoder can size its pool without importing torch

    before = torch.get_num_threads()
    if count < before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
