"""Is a process alive? For the tests that kill a parent and check what became of its children."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped between the two checks
        return False


def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    """Poll until `pid` is gone; False if it still runs after `timeout_s` (a bound, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def pid_written_by(path: Path, parent: subprocess.Popen, what: str, timeout_s: float = 60.0) -> int:
    """The pid `parent` writes to `path` once its child started; fails if `parent` exits first or
    nothing is written within `timeout_s` (a bound, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text()):
        assert parent.poll() is None and time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.05)
    return int(path.read_text())
