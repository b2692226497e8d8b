"""The one place the tests start real processes: `chameleon shard` ranks, `chameleon router` and
`chameleon launch`.

- Start (`Child`): output captured to a log file, stdin closed, the child in its own process group, and an
  environment without the variables that would set the child's flags (`child_env`).
- Wait (`wait_until`, `Child.wait_socket`, `Child.wait_http_ok`): on a condition, with a generous deadline
  (a busy 2-core machine can be many times slower than an idle one): a bound against hanging, never a
  timing. A child that exits while waited on fails at once, with the tail of its log.
- Stop (`Child.stop`): a signal to the child (SIGTERM unless told), a grace period, then SIGKILL to its
  whole process group; stragglers of the group are killed even when the leader exited in time.

Every test module that imports this module carries `pytestmark = pytest.mark.slow` (tests/test_docs.py
checks it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
START_S = 300.0  # deadline of a start-up (model load and warmup on a busy machine): generous, not a bound
SHARD_BUDGET = 100_000_000  # bytes per CPU shard: tiny weights + activations + a pool of ~2500 pages
PREFILL = 256  # --max-batch-prefill-tokens: a small warmup and activation reserve
DIST_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
FLAG_ENV = ("PORT", "HOSTNAME", "GRPC_PORT", "MODEL_ID", "ADAPTER_DIR", "MAX_CONCURRENT_REQUESTS",
            "NUM_SHARD")


def chameleon(*args: str) -> list[str]:
    """argv of `python -m chameleon ARGS` with this interpreter."""
    return [sys.executable, "-m", "chameleon", *args]


def child_env(drop: Iterable[str] = (*FLAG_ENV, *DIST_ENV), **extra: str) -> dict[str, str]:
    """This environment without `drop` (variables that would set the child's flags), plus `extra`."""
    dropped = set(drop)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir(prefix: str = "ct-") -> Path:
    """A new folder under /tmp with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def make_adapter_dir(src: Path, dest: Path, count: int) -> list[str]:
    """`count` adapters a00, a01, ... under `dest`, each a symlink to one of the adapter folders in `src`."""
    pool = sorted(p for p in src.iterdir() if p.is_dir())
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"a{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        (dest / name).symlink_to(pool[i % len(pool)], target_is_directory=True)
    return names


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = START_S,
               child: Child | None = None, poll_s: float = 0.05) -> None:
    """Return once `cond()` holds; RuntimeError when `child` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if child is not None:
            child.check_alive(child.name)
        if time.monotonic() > deadline:
            tail = f":\n{child.tail()}" if child is not None else ""
            raise RuntimeError(f"{what}: not within {timeout_s:.0f}s{tail}")
        time.sleep(poll_s)


class Child:
    """One child process with its log; `respawn` starts the same command again (log appended)."""

    tail_chars = 4000

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, name: str = "child", append: bool = False) -> None:
        self.argv, self.log, self.name, self.cwd = list(argv), log, name, cwd
        self.env = child_env() if env is None else env
        self._spawn("a" if append else "w")

    def _spawn(self, mode: str) -> None:
        with self.log.open(mode) as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         start_new_session=True)

    def respawn(self) -> None:
        """Start the same command again (after it exited or was killed), appending to the same log."""
        self._spawn("a")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-self.tail_chars:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self, what: str | None = None) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{what or self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_socket(self, path: str | Path, timeout_s: float = START_S) -> None:
        """Until the unix socket file `path` exists."""
        wait_until(lambda: Path(path).exists(), f"{self.name} socket {path}", timeout_s, self)

    def wait_http_ok(self, url: str, timeout_s: float = START_S, poll_s: float = 0.1) -> None:
        """Until GET `url` answers 200."""
        def ok() -> bool:
            try:
                return requests.get(url, timeout=5).status_code == 200
            except requests.ConnectionError:
                return False
        wait_until(ok, f"{self.name} {url} healthy", timeout_s, self, poll_s)

    def kill(self, wait_s: float = 30.0) -> None:
        """SIGKILL the child's whole process group and reap the child."""
        self._kill_group()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(wait_s)

    def stop(self, signals: Sequence[int] = (signal.SIGTERM,), grace_s: float = 20.0) -> None:
        """Send `signals` to the child, wait `grace_s` for it, then SIGKILL its process group."""
        if self.proc.poll() is None:
            for sig in signals:
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        self.kill()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def stop_all(children: Sequence[Child], signals: Sequence[int] = (signal.SIGTERM,),
             grace_s: float = 20.0) -> None:
    """`Child.stop` for a group that must shut down together (tensor-parallel ranks): every child gets
    the signals first, then each is waited for and killed."""
    for child in children:
        if child.alive():
            for sig in signals:
                child.proc.send_signal(sig)
    for child in children:
        child.stop((), grace_s)


def shard_argv(model_dir: Path, uds_prefix: str | Path, *flags: str, adapter_dir: Path | None = None,
               budget: int | None = SHARD_BUDGET, threads: int = 1) -> list[str]:
    """`chameleon shard` on `uds_prefix` (rank R listens on `<prefix>-R`), one thread by default."""
    argv = chameleon("shard", str(model_dir), "--uds-path", str(uds_prefix))
    if adapter_dir is not None:
        argv += ["--adapter-dir", str(adapter_dir)]
    if budget is not None:
        argv += ["--memory-budget", str(budget)]
    return [*argv, "--threads", str(threads), *flags]


class ShardProc(Child):
    """A world-size-1 `chameleon shard` in `folder` (a new short folder when None); `uds` is what a
    router gets (`<prefix>-0`). `stop` removes a folder it created."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, folder: Path | None = None,
                 *flags: str, budget: int = SHARD_BUDGET, env: dict[str, str] | None = None) -> None:
        self.owns_dir = folder is None
        self.dir = workdir("cs-") if folder is None else folder
        self.prefix = self.dir / "s"
        self.uds = f"{self.prefix}-0"
        argv = shard_argv(model_dir, self.prefix, *flags, adapter_dir=adapter_dir, budget=budget)
        super().__init__(argv, self.dir / "shard.log", env, name="shard")

    def wait_ready(self, timeout_s: float = START_S) -> ShardProc:
        self.wait_socket(self.uds, timeout_s)
        return self

    def restart(self) -> ShardProc:
        """Start the same shard again (after `kill`), as the launcher does: stale socket removed."""
        self.kill()
        Path(self.uds).unlink(missing_ok=True)
        self.respawn()
        return self

    def stop(self, signals: Sequence[int] = (signal.SIGTERM,), grace_s: float = 20.0) -> None:
        super().stop(signals, grace_s)
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class RouterProc(Child):
    """`chameleon router` in front of `shard` (a ShardProc, or rank 0's socket path) on 127.0.0.1
    `http_port`/`grpc_port`, logging into `folder/router.log`; `http` and `grpc` are its addresses."""

    def __init__(self, shard: ShardProc | str, model_dir: Path, adapter_dir: Path, folder: Path,
                 http_port: int, grpc_port: int, *flags: str, env: dict[str, str] | None = None) -> None:
        self.http = f"http://127.0.0.1:{http_port}"
        self.grpc = f"127.0.0.1:{grpc_port}"
        shard_uds = shard.uds if isinstance(shard, ShardProc) else shard
        argv = chameleon(
            "router", "--master-shard-uds-path", shard_uds, "--tokenizer", str(model_dir),
            "--adapter-dir", str(adapter_dir), "--hostname", "127.0.0.1", "--port", str(http_port),
            "--grpc-port", str(grpc_port), "--max-batch-prefill-tokens", str(PREFILL), *flags,
        )
        super().__init__(argv, folder / "router.log", env, name="router")

    def wait_healthy(self, timeout_s: float = START_S) -> None:
        self.wait_http_ok(self.http + "/health", timeout_s)


def run_ranks(target: Callable[..., None], world: int, *args: object, timeout_s: float = 240.0
              ) -> list[int | None]:
    """Start `world` spawned processes `target(rank, world, free_port, *args)` (a tensor-parallel group),
    wait for them (killing any still alive after `timeout_s`) and return their exit codes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(rank, world, port, *args)) for rank in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=timeout_s)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [proc.exitcode for proc in procs]


def rank_errors(errors_dir: Path) -> str:
    """What the failed ranks of a `run_ranks` group wrote into `errors_dir/*.err` (assertion messages)."""
    return "\n".join(f.read_text() for f in sorted(errors_dir.glob("*.err")))
