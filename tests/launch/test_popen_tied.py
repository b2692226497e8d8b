"""`popen_tied`: a child started from any thread lives while its parent process lives and gets SIGTERM
when the parent dies, however it dies (Linux PR_SET_PDEATHSIG from a thread that lives as long as the
process). Real processes, SIGKILLed parents."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path

import pytest

from chameleon.tools.launch.procs import popen_tied
from tests.pids import alive, pid_written_by, wait_gone

LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
pytestmark = [pytest.mark.slow, LINUX_ONLY]

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]

# A Ray replica's way: the replica group is started from a pool thread, and that thread then exits.
PARENT = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from chameleon.scale.replica_proc import GroupSpec, LaunchedGroup
workdir, marker = Path(sys.argv[1]), Path(sys.argv[2])

class Sleeper(LaunchedGroup):
    def argv(self):
        return [sys.executable, "-c", "import time; time.sleep(120)"]

group = Sleeper(GroupSpec(None, None), workdir)
with ThreadPoolExecutor(1) as pool:
    pool.submit(group.start).result()
marker.write_text(str(group.proc.pid))  # the pool's thread has exited
time.sleep(120)
"""


def test_a_child_outlives_the_thread_that_started_it() -> None:
    box: list[subprocess.Popen[bytes]] = []
    starter = threading.Thread(target=lambda: box.append(popen_tied(SLEEPER, stdin=subprocess.DEVNULL)))
    starter.start()
    starter.join()
    child = box[0]
    try:
        deadline = time.monotonic() + 1.0  # a parent-death signal on the thread's exit would land by now
        while time.monotonic() < deadline:
            assert child.poll() is None, "the child died with the thread that started it"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()


def _start_in_fork(out: Queue) -> None:
    child = popen_tied([sys.executable, "-c", "pass"])
    out.put(child.wait(60))


def test_a_forked_process_starts_its_own_forker() -> None:
    """The parent's forker thread does not exist in a forked child: without a fresh one this hangs."""
    popen_tied([sys.executable, "-c", "pass"]).wait(60)  # the parent's forker thread exists
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_start_in_fork, args=(out,))
    proc.start()
    try:
        assert out.get(timeout=60) == 0
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


def test_a_start_error_reaches_the_caller() -> None:
    with pytest.raises(FileNotFoundError):
        popen_tied(["/nonexistent/chameleon-test-binary"])


def test_a_replica_group_dies_with_its_killed_replica_process(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "w"), str(marker)], env=env)
    child = None
    try:
        child = pid_written_by(marker, parent, "the group")
        time.sleep(0.5)  # a parent-death signal on the pool thread's exit would land by now
        assert alive(child), "the group died with the pool thread that started it"
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can clean up
        parent.wait()
        assert wait_gone(child), "the replica's launcher outlived the replica process"
    finally:
        parent.kill()
        parent.wait()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)
