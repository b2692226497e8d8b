"""Socket readiness, stale sockets and process stopping, with real (tiny) child processes."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from chameleon.tools.launch.procs import (
    Child,
    Interrupted,
    LaunchError,
    ProcSpec,
    describe_exit,
    endpoint_ready,
    remove_stale_socket,
    stop_all,
    wait_ready,
)

pytestmark = pytest.mark.slow

STANDIN = str(Path(__file__).with_name("standin.py"))


def _child(sock_dir: Path, *extra: str, name: str = "shard-0") -> Child:
    path = f"{sock_dir}/{name}"
    return Child(ProcSpec(name, (sys.executable, STANDIN, "unix", path, *extra), unix_socket=path))


def test_wait_ready_returns_once_every_socket_accepts(sock_dir):
    children = [_child(sock_dir, name=f"shard-{r}") for r in range(2)]
    for c in children:
        c.start()
    ready: list[str] = []
    try:
        wait_ready(children, 30, on_ready=lambda c: ready.append(c.name), poll_s=0.02)
        assert sorted(ready) == ["shard-0", "shard-1"]
        assert all(endpoint_ready(c.spec) for c in children)
    finally:
        stop_all(children, 5)
    assert all(c.poll() == -signal.SIGTERM for c in children)


def test_child_that_exits_first_is_a_startup_error(sock_dir):
    child = _child(sock_dir, "--exit-now", "7")
    child.start()
    with pytest.raises(LaunchError, match="shard-0 exited with code 7 before it was ready"):
        wait_ready([child], 30, poll_s=0.02)


def test_silent_child_times_out(sock_dir):
    child = Child(ProcSpec("shard-0", (sys.executable, "-c", "import time; time.sleep(60)"),
                           unix_socket=f"{sock_dir}/never"))
    child.start()
    try:
        with pytest.raises(LaunchError, match="shard-0 not listening after 0s"):
            wait_ready([child], 0.0, poll_s=0.02)
        with pytest.raises(Interrupted):
            wait_ready([child], 30, abort=lambda: True)
    finally:
        stop_all([child], 5)


def test_socket_file_without_listener_is_not_ready(sock_dir):
    path = f"{sock_dir}/dead"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()
    assert not endpoint_ready(ProcSpec("x", (), unix_socket=path))
    remove_stale_socket(path)
    assert not os.path.exists(path)
    remove_stale_socket(path)  # already gone: fine


def test_remove_stale_socket_refuses_regular_files(sock_dir):
    path = sock_dir / "file"
    path.write_text("data")
    with pytest.raises(LaunchError, match="not a socket"):
        remove_stale_socket(str(path))
    assert path.exists()


def test_stop_all_kills_a_child_that_ignores_sigterm(sock_dir):
    flag = sock_dir / "ignoring"
    code = f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(flag)!r}, 'w'); " \
           "time.sleep(60)"
    child = Child(ProcSpec("stubborn", (sys.executable, "-c", code)))
    child.start()
    while not flag.exists() and child.wait(0.02) is None:
        pass
    stop_all([child], 0.2)
    assert child.poll() == -signal.SIGKILL


@pytest.mark.parametrize("code, text", [(None, "running"), (0, "exited with code 0"),
                                        (-9, "killed by SIGKILL"), (-15, "killed by SIGTERM")])
def test_describe_exit(code, text):
    assert describe_exit(code) == text
