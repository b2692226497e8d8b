"""One replica's `chameleon launch` process group (router + shard ranks), as a Ray replica runs it.

The launcher supervises the group as it does outside Ray (a dead shard group is restarted and the
router reconnects). It runs in its own session; `stop()` (the replica's shutdown) ends the whole group,
and the launcher gets SIGTERM if the replica's process dies without stopping it (`popen_tied`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from chameleon.tools.launch.procs import popen_tied


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """What every replica launches: `launch_args` are extra `chameleon launch` flags."""

    model_id: str | None  # None: the launcher's demo model
    adapter_dir: str | None
    num_shard: int = 1
    launch_args: tuple[str, ...] = ()
    startup_timeout_s: float = 600.0


class LaunchedGroup:
    """`chameleon launch` on free local ports with its own socket folder and log."""

    def __init__(self, spec: GroupSpec, workdir: Path) -> None:
        self.spec, self.workdir = spec, workdir
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "launch.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        s = self.spec
        argv = [sys.executable, "-m", "chameleon", "launch", "--num-shard", str(s.num_shard),
                "--hostname", "127.0.0.1", "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                "--shard-uds-path", str(self.workdir / "s")]
        if s.model_id:
            argv += ["--model-id", s.model_id]
        if s.adapter_dir:
            argv += ["--adapter-dir", s.adapter_dir]
        return [*argv, *s.launch_args]

    def start(self) -> None:
        """Start the launcher; `endpoint.json` in the workdir names the router's addresses (bench-ray)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        endpoint = {"http": self.url, "grpc": f"127.0.0.1:{self.grpc_port}"}
        (self.workdir / "endpoint.json").write_text(json.dumps(endpoint) + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "GRPC_PORT", "HOSTNAME")}
        with self.log.open("ab") as out:
            self.proc = popen_tied(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def healthy(self, timeout_s: float = 3.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout_s) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self) -> None:
        """Until /health answers 200; RuntimeError with the log's tail when the launcher exits or the
        start-up timeout passes."""
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while not self.healthy():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"chameleon launch did not become healthy:\n{tail}")
            time.sleep(0.2)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (the launcher drains and stops its children), then SIGKILL to the whole group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.proc = None
