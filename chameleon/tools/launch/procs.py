"""Child processes of the launcher and the wait for them to start listening.

Each child runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
launcher, which then decides the order of shutdown; on Linux a child also gets SIGTERM if the launcher
itself dies without cleaning up (PR_SET_PDEATHSIG). Readiness is "its socket accepts a connection".
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger("chameleon.tools.launch")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ProcSpec:
    """How to start one child and how to tell that it is ready.

    Exactly one of `unix_socket` (a path) or `tcp` ((host, port)) names the endpoint that accepts
    connections once the child serves.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # overlaid on the launcher's environment
    unix_socket: str | None = None
    tcp: tuple[str, int] | None = None


class LaunchError(RuntimeError):
    """A child exited, or did not listen in time, before its group was ready."""


class Interrupted(RuntimeError):
    """Startup was abandoned because a stop was requested."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _die_with_parent() -> None:
    """Runs in the child before exec (Popen's preexec_fn, Linux only): ask Linux to SIGTERM the child
    when the thread that started it dies, however it dies (`popen_tied` makes that thread live as long
    as the process)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Forker:
    """One daemon thread, started on first use and never leaving while the process lives, that runs
    every `popen_tied`. Linux sends PR_SET_PDEATHSIG's signal when the *thread* that forked the child
    exits, so a child started from a short-lived thread (a worker pool's, an actor constructor's, an
    asyncio.to_thread call's) would be killed with that thread; started from here, only when the whole
    process dies."""

    _lock = threading.Lock()
    _jobs: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future]] | None = None

    @classmethod
    def run(cls, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with cls._lock:
            if cls._jobs is None:
                cls._jobs = queue.SimpleQueue()
                threading.Thread(target=cls._serve, args=(cls._jobs,), name="chameleon-forker",
                                 daemon=True).start()
            jobs = cls._jobs
        done: Future[subprocess.Popen[bytes]] = Future()
        jobs.put((make, done))
        return done.result()

    @classmethod
    def forget(cls) -> None:
        """In a forked child: the parent's thread is not there; the next `run` starts a new one."""
        cls._lock = threading.Lock()
        cls._jobs = None

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        while True:
            make, done = jobs.get()
            try:
                done.set_result(make())
            except BaseException as exc:  # handed to the caller, which re-raises it
                done.set_exception(exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Forker.forget)


def popen_tied(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(argv, **kwargs)` for a child that must not outlive this process: on Linux it
    gets SIGTERM when this process dies, however it dies (SIGKILL, OOM kill, crash), from whichever
    thread this is called. A parent that died between the fork and the request is caught too (the
    child then exits before exec). Elsewhere: a plain Popen."""
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload]
    parent = os.getpid()

    def tie() -> None:
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(1)

    return _Forker.run(lambda: subprocess.Popen(list(argv), preexec_fn=tie, **kwargs))  # type: ignore[call-overload]


class Child:
    """One supervised process (not started until `start`)."""

    def __init__(self, spec: ProcSpec) -> None:
        self.spec = spec
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        env = {**os.environ, **self.spec.env}
        self._popen = popen_tied(self.spec.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("started %s", self.name, extra={"pid": self._popen.pid})

    def poll(self) -> int | None:
        """Exit code if the child has exited (negative = signal), None while it runs or before start."""
        return self._popen.poll() if self._popen else None

    def exited(self) -> bool:
        return self._popen is not None and self._popen.poll() is not None

    def send(self, sig: int) -> None:
        """Signal the child's whole process group (ignored once it has exited)."""
        if self._popen is None or self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def wait(self, timeout: float) -> int | None:
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None


def stop_all(children: Sequence[Child], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to every child, give them `timeout` seconds together, then SIGKILL the rest
    (with sig=SIGKILL the children are only reaped)."""
    for child in children:
        child.send(sig)
    deadline = time.monotonic() + (5.0 if sig == signal.SIGKILL else timeout)
    for child in children:
        if child.wait(deadline - time.monotonic()) is None and sig != signal.SIGKILL:
            log.warning("%s did not exit %.1fs after %s; killing it", child.name, timeout,
                        signal.Signals(sig).name)
            child.send(signal.SIGKILL)
            child.wait(5.0)


def endpoint_ready(spec: ProcSpec) -> bool:
    """True when the child's endpoint accepts a connection right now."""
    if spec.unix_socket is not None:
        family, address = socket.AF_UNIX, spec.unix_socket
        if not os.path.exists(spec.unix_socket):
            return False
    elif spec.tcp is not None:
        host, port = spec.tcp
        family, address = socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port)
    else:
        return True
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def wait_ready(children: Sequence[Child], timeout: float, *, abort: Callable[[], bool] = lambda: False,
               on_ready: Callable[[Child], None] = lambda c: None, poll_s: float = 0.1) -> None:
    """Block until every child's endpoint accepts connections.

    Raises LaunchError when a child exits first (its exit status in the message) or when `timeout`
    seconds pass, and Interrupted as soon as `abort()` is true.
    """
    pending = list(children)
    deadline = time.monotonic() + timeout
    while pending:
        if abort():
            raise Interrupted("stop requested during startup")
        for child in list(pending):
            code = child.poll()
            if code is not None:
                raise LaunchError(f"{child.name} {describe_exit(code)} before it was ready")
            if endpoint_ready(child.spec):
                pending.remove(child)
                on_ready(child)
        if pending and time.monotonic() > deadline:
            names = ", ".join(c.name for c in pending)
            raise LaunchError(f"{names} not listening after {timeout:.0f}s (see --startup-timeout)")
        if pending:
            time.sleep(poll_s)


def remove_stale_socket(path: str) -> None:
    """Delete a socket file left by an earlier run; refuse to delete anything that is not a socket."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LaunchError(f"{path} exists and is not a socket; choose another --shard-uds-path")
    os.unlink(path)
    log.info("removed stale socket %s", path)
