"""How many cores a build may use, and torch's intra-op threads held to that while it runs.

``os.cpu_count()`` counts the machine, not what this process may use: in a container limited to 2 CPUs
on a 64-core host, or under ``taskset``, torch's 64 OpenMP threads and 64 PNG encoder threads would
fight over 2 cores. :func:`available_cores` takes the CPU affinity and the cgroup quota, less the cores
other processes keep busy right now (``/proc/loadavg``'s runnable count, read three times, the least
kept). OpenMP threads spin while they wait, so a core taken by another process slows every parallel
region that counts on it: resnet18 × 8 with one core busy took 1.49 s with 2 torch threads and 1.33 s
with 1 (2 cores, quiet: 0.78 s with 2, 1.08 s with 1). The PNG encoder keeps one thread per allowed core:
Pillow releases the GIL while compressing and its threads block rather than spin.

Load comes and goes during a long run (feature visualisation, a scan of a folder), so a
:class:`ThreadPolicy` reads it again, at most once a second, at the points its user marks (a batch, an
optimisation step), counting only other processes' runnable threads: this process's own (its OpenMP
workers spin between regions and look busy) are not load. Under three processes that keep both cores
busy the demo's ``--featviz conv3`` took 4.7× its quiet time with torch's 2 threads, and a resnet18 scan
about 7×, against a fair share of about 2.6×; with the policy 3.02× and 3.19× (``bench.load_ratio``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

__all__ = ["ThreadPolicy", "allowed_cores", "available_cores"]


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
    """Runnable threads of other processes: ``/proc/loadavg``'s 4th field less this process's own."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, running - _running_here())


def _running_here() -> int:
    """This process's runnable threads (at least the one asking)."""
    count = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            count += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, count)


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


class ThreadPolicy:
    """torch's intra-op threads held to the cores free now (never more than torch had) inside the block,
    as they were after it; :meth:`refresh` follows the load as it changes."""

    def __init__(self, every: float = 1.0) -> None:
        self.every, self._before, self._checked = every, 0, -math.inf

    def __enter__(self) -> ThreadPolicy:
        import torch  # here, so the encoder can size its pool without importing torch

        self._before = torch.get_num_threads()
        self.refresh()
        return self

    def refresh(self) -> None:
        """Threads set to the cores free now, where the last look is over ``every`` seconds old."""
        import torch

        now = time.monotonic()
        if now - self._checked < self.every:
            return
        self._checked = now
        count = min(self._before, available_cores())
        if count != torch.get_num_threads():
            torch.set_num_threads(count)

    def __exit__(self, *exc: object) -> None:
        import torch

        if torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)
