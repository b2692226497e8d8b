"""A benchmark that dies mid-run does not leave the system it launched running: the launcher gets
SIGTERM from the kernel when the benchmark process is killed (chameleon.tools.bench.system)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pids import alive, pid_written_by, wait_gone

PARENT = """
import asyncio, sys
from pathlib import Path
from chameleon.tools.bench import system
pidfile, log, how = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
child = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
         "time.sleep(120)", pidfile]
spec = system.SystemSpec(None, None, startup_timeout_s=120)
if how == "start":  # soak's way; never healthy: start() waits until it is killed
    system.start(spec, "fifo", "none", log, wrap=lambda argv: child)
else:  # bench-compare's way: spawned from the event loop, the wait for health in a worker thread
    async def main():
        await asyncio.to_thread(system.spawn(spec, "fifo", "none", log, wrap=lambda argv: child).wait_ready)
    asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("how", ["start", "spawn-in-loop"])
def test_the_launched_system_dies_with_a_killed_benchmark(tmp_path: Path, how: str) -> None:
    pidfile = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", PARENT, str(pidfile), str(tmp_path / "log"), how]
    parent = subprocess.Popen(argv, env=env)
    try:
        child = pid_written_by(pidfile, parent, "the system")
        assert alive(child)
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can clean up
        parent.wait()
        assert wait_gone(child), "the launched system outlived the benchmark"
    finally:
        parent.kill()
        if pidfile.exists() and pidfile.read_text() and alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
