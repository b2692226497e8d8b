"""Machine load around a run: the 1-minute load average (/proc/loadavg) before and after, recorded in
every run's statistics so that contention from other processes on the machine is visible next to the
latencies it distorts."""

from __future__ import annotations

import os


def loadavg_1m() -> float | None:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def cpu_count() -> int:
    return os.cpu_count() or 1
