"""How many CPU cores this process may actually use (affinity mask, cgroup quota)."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores"]


def _cgroup_quota() -> float | None:
    """CPU limit from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, ``None`` if none."""
    limits: list[float] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":
            bases = [Path("/sys/fs/cgroup")]
            files = ("cpu.max",)
        elif "cpu" in controllers.split(","):
            bases = [Path("/sys/fs/cgroup") / c for c in ("cpu,cpuacct", "cpu", "cpuacct,cpu")]
            files = ("cpu.cfs_quota_us",)
        else:
            continue
        for base in bases:
            # Walk from the process's own cgroup up to the root: any level may limit it.
            node = base / rel
            while True:
                limit = _read_limit(node, files[0])
                if limit is not None:
                    limits.append(limit)
                if node == base or base not in node.parents:
                    break
                node = node.parent
    return min(limits) if limits else None


def _read_limit(folder: Path, name: str) -> float | None:
    try:
        if name == "cpu.max":
            quota, _, period = (folder / name).read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text().strip())
        period_us = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's cores, which over-subscribes threads in a
    container limited to fewer; this does not.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
