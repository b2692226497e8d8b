"""Real processes for the router's end-to-end tests: `chameleon shard` ranks and `chameleon router`, on
unix sockets under a short /tmp folder and free TCP ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

BUDGET = 100_000_000  # bytes per shard on CPU: tiny weights + activations + a pool of ~2500 pages
PREFILL = 256  # --max-batch-prefill-tokens: a small activation reserve at warmup
_DIST_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def _env() -> dict[str, str]:
    """This environment without the variables that would set flags of the child commands."""
    flags = {
        "PORT",
        "HOSTNAME",
        "GRPC_PORT",
        "MODEL_ID",
        "ADAPTER_DIR",
        "MAX_CONCURRENT_REQUESTS",
        *_DIST_ENV,
    }
    return {k: v for k, v in os.environ.items() if k not in flags}


class Proc:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class ShardProc(Proc):
    """A world-size-1 shard; `uds` is what the router gets (`<prefix>-0`)."""

    def __init__(self, model_dir: Path, adapter_dir: Path, workdir: Path, *flags: str) -> None:
        self.uds = f"{workdir}/s-0"
        super().__init__(
            [
                sys.executable,
                "-m",
                "chameleon",
                "shard",
                str(model_dir),
                "--uds-path",
                f"{workdir}/s",
                "--adapter-dir",
                str(adapter_dir),
                "--memory-budget",
                str(BUDGET),
                "--threads",
                "1",
                *flags,
            ],
            workdir / "shard.log",
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not Path(self.uds).exists():
            self.check_alive("shard")
            if time.monotonic() > deadline:
                raise RuntimeError(f"shard socket never appeared:\n{self.tail()}")
            time.sleep(0.05)


class RouterProc(Proc):
    def __init__(
        self,
        shard: ShardProc,
        model_dir: Path,
        adapter_dir: Path,
        workdir: Path,
        http_port: int,
        grpc_port: int,
        *flags: str,
    ) -> None:
        self.http = f"http://127.0.0.1:{http_port}"
        self.grpc = f"127.0.0.1:{grpc_port}"
        super().__init__(
            [
                sys.executable,
                "-m",
                "chameleon",
                "router",
                "--master-shard-uds-path",
                shard.uds,
                "--tokenizer",
                str(model_dir),
                "--adapter-dir",
                str(adapter_dir),
                "--hostname",
                "127.0.0.1",
                "--port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--max-batch-prefill-tokens",
                str(PREFILL),
                *flags,
            ],
            workdir / "router.log",
        )

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive("router")
            try:
                if requests.get(self.http + "/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"router not healthy in time:\n{self.tail()}")
            time.sleep(0.1)


def workdir() -> Path:
    """A short folder (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="cra-", dir="/tmp"))


def make_adapter_dir(src: Path, dest: Path, count: int) -> list[str]:
    """`count` adapters a00, a01, ... under `dest`, each a symlink to one of the tiny set in `src`."""
    pool = sorted(p for p in src.iterdir() if p.is_dir())
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"a{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        (dest / name).symlink_to(pool[i % len(pool)], target_is_directory=True)
    return names
