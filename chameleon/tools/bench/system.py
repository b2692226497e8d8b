"""A `chameleon launch` subprocess for one configuration of a comparison: free ports, a private socket
folder, its log in a file; ready when GET /health answers 200; stopped by SIGTERM (then SIGKILL). On
Linux the launcher also gets SIGTERM if the benchmark dies without stopping it (killed, or SIGTERM'd
mid-run), so no system outlives the benchmark that started it."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chameleon.tools.launch.plan import free_port
from chameleon.tools.launch.procs import popen_tied

# Environment variables the launcher would read as its flags; the benchmark sets those itself.
ENV_DROP = ("PORT", "GRPC_PORT", "MODEL_ID", "HOSTNAME", "SCHEDULER", "ADAPTER_CACHE", "NUM_SHARD")


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """What every configuration shares; `extra` are further `chameleon launch` flags."""

    model_id: Path | None
    adapter_dir: Path | None
    extra: tuple[str, ...] = ()
    startup_timeout_s: float = 600.0


@dataclass(slots=True)
class System:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Path
    sock_dir: Path
    name: str = "system"
    startup_timeout_s: float = 600.0
    _closed: bool = field(default=False)

    @property
    def target(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self) -> None:
        """Wait until GET /health answers 200. A launcher that exits, or the startup timeout, stops the
        system and raises RuntimeError with the tail of its log."""
        deadline = time.monotonic() + self.startup_timeout_s
        while _health(self.http_port) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                code = self.proc.returncode
                why = f"exited with {code}" if code is not None else "timed out"
                raise RuntimeError(f"chameleon launch ({self.name}) {why}; log {self.log}:\n{self.tail()}")
            time.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the launcher (it drains the router and stops the shards), SIGKILL if it lingers."""
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def _health(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def launch_argv(spec: SystemSpec, scheduler: str, cache: str, http_port: int, grpc_port: int,
                sock_prefix: str) -> list[str]:
    argv = [sys.executable, "-m", "chameleon", "launch", "--scheduler", scheduler, "--adapter-cache", cache,
            "--port", str(http_port), "--grpc-port", str(grpc_port), "--hostname", "127.0.0.1",
            "--shard-uds-path", sock_prefix, "--startup-timeout", str(int(spec.startup_timeout_s)),
            "--drain-timeout", "5", "--stop-timeout", "5"]
    if spec.model_id is not None:
        argv += ["--model-id", str(spec.model_id)]
    if spec.adapter_dir is not None:
        argv += ["--adapter-dir", str(spec.adapter_dir)]
    return argv + list(spec.extra)


def spawn(spec: SystemSpec, scheduler: str, cache: str, log: Path,
          env_drop: Sequence[str] = ENV_DROP,
          wrap: Callable[[list[str]], list[str]] | None = None) -> System:
    """Start the launcher without waiting for it (`System.wait_ready` waits). `wrap` rewrites its command
    line (e.g. to run it inside a memory cgroup: chameleon/tools/bench/cgroup.py). The launcher gets
    SIGTERM if this process dies without stopping it (`popen_tied`), whichever thread calls this."""
    http_port, grpc_port = free_port(), free_port()
    sock_dir = Path(tempfile.mkdtemp(prefix="chb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    argv = launch_argv(spec, scheduler, cache, http_port, grpc_port, f"{sock_dir}/s")
    if wrap is not None:
        argv = wrap(argv)
    with log.open("wb") as out:
        proc = popen_tied(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    return System(proc, http_port, grpc_port, log, sock_dir, f"{scheduler}/{cache}", spec.startup_timeout_s)


def start(spec: SystemSpec, scheduler: str, cache: str, log: Path,
          env_drop: Sequence[str] = ENV_DROP,
          wrap: Callable[[list[str]], list[str]] | None = None) -> System:
    """`spawn`, then `wait_ready`: the system is healthy when this returns."""
    system = spawn(spec, scheduler, cache, log, env_drop, wrap)
    system.wait_ready()
    return system
