"""The supervisor with stand-in children (tests/launch/standin.py): startup, a shard-group restart
after SIGKILL, the stop order on SIGTERM (router drains while the shards are still up), failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chameleon.tools.launch.plan import LaunchPlan, free_port
from chameleon.tools.launch.procs import ProcSpec, endpoint_ready
from chameleon.tools.launch.supervisor import Supervisor, Timeouts

pytestmark = pytest.mark.slow
STANDIN = str(Path(__file__).with_name("standin.py"))
# Stand-ins start in well under a second on an idle machine; on a busy one Python start-up alone can
# take many seconds. These are bounds against hanging, never timings under test.
STARTUP_S = 120.0
WAIT_S = 300.0


def _plan(sock_dir: Path, ranks: int = 2, shard_extra: tuple[str, ...] = (),
          router_extra: tuple[str, ...] = ()) -> LaunchPlan:
    def shards(master_port: int) -> tuple[ProcSpec, ...]:
        return tuple(ProcSpec(f"shard-{r}", (sys.executable, STANDIN, "unix", f"{sock_dir}/s-{r}",
                                             *shard_extra),
                              env={"RANK": str(r), "MASTER_PORT": str(master_port)},
                              unix_socket=f"{sock_dir}/s-{r}") for r in range(ranks))

    port = free_port()
    router = ProcSpec("router", (sys.executable, STANDIN, "tcp", str(port), *router_extra),
                      tcp=("127.0.0.1", port))
    return LaunchPlan(shards=shards, router=router, master_port=None)


class _WhenServing:
    """Runs `action` in a thread once the supervisor reports serving. If it never does within WAIT_S,
    the test process gets SIGTERM (the supervisor stops, the test fails on `errors`) instead of the
    supervisor serving forever; once `finish()` is called the thread does nothing any more."""

    def __init__(self, sup: Supervisor, action: Callable[[], None]) -> None:
        self.serving, self.finished = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        sup.on_serving = self.serving.set
        self.thread = threading.Thread(target=self._run, args=(action,), daemon=True)
        self.thread.start()

    def _run(self, action: Callable[[], None]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not self.serving.wait(0.1):
            if self.finished.is_set():
                return
            if time.monotonic() > deadline:
                self.errors.append(AssertionError(f"the supervisor did not report serving in {WAIT_S:.0f} s"))
                os.kill(os.getpid(), signal.SIGTERM)
                return
        action()

    def finish(self) -> list[BaseException]:
        self.finished.set()
        self.thread.join(WAIT_S)
        return self.errors


def _run_with(sup: Supervisor, script: Callable[[], None]) -> int:
    """Run the supervisor in this (main) thread while `script` drives it from another thread."""
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            script()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    driver = _WhenServing(sup, drive)
    code = sup.run()
    errors += driver.finish()
    if errors:
        raise errors[0]
    return code


def _wait_for(cond: Callable[[], bool], what: str) -> None:
    """Poll `cond` until it holds; the deadline is generous (a busy machine), only against hanging."""
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {WAIT_S:.0f} s")
        time.sleep(0.05)


def test_sigkilled_shard_restarts_group_and_sigterm_drains_router_first(sock_dir):
    drained = sock_dir / "drained"
    plan = _plan(sock_dir, router_extra=("--on-term", str(drained), f"{sock_dir}/s-0"))
    sup = Supervisor(plan, Timeouts(startup=STARTUP_S, drain=60, stop=30, poll=0.05), max_restarts=3)
    seen: dict[str, object] = {}

    def script() -> None:
        old = [c.pid for c in sup.shards]
        router_pid = sup.router.pid
        os.kill(old[1], signal.SIGKILL)
        _wait_for(lambda: sup.restarts == 1 and len(sup.shards) == 2
                  and all(endpoint_ready(c.spec) for c in sup.shards)
                  and sorted(c.pid for c in sup.shards) != sorted(old), "the restarted group")
        seen.update(old=old, new=[c.pid for c in sup.shards], router_same=sup.router.pid == router_pid,
                    survivor_gone=_gone(old[0]))

    assert _run_with(sup, script) == 0
    assert seen["router_same"], "the router must not be restarted with the shards"
    assert seen["survivor_gone"], "the surviving rank of the dead group must be stopped"
    assert not set(seen["new"]) & set(seen["old"])
    assert drained.read_text() == "shards-up", "the router drains while the shards still serve"
    assert not list(sock_dir.glob("s-*")), "sockets are removed at shutdown"
    assert all(c.exited() for c in [*sup.shards, sup.router])


def test_sigterm_while_the_router_starts_drains_it_before_the_shards(sock_dir):
    """A stop that arrives after the router was started but before it listens: the router still gets
    its SIGTERM first, while the shards serve (it may already be answering clients that polled it)."""
    drained, started = sock_dir / "drained", sock_dir / "started"
    plan = _plan(sock_dir, router_extra=("--on-term", str(drained), f"{sock_dir}/s-0",
                                         "--listen-after", "600", str(started)))
    sup = Supervisor(plan, Timeouts(startup=STARTUP_S, drain=60, stop=30, poll=0.05))

    def stop_once_started() -> None:
        deadline = time.monotonic() + WAIT_S
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_started, daemon=True).start()
    assert sup.run() == 0
    assert started.exists(), "the stand-in router never started"
    assert drained.exists() and drained.read_text() == "shards-up", \
        "the router must be drained (SIGTERM) while the shards are still up"
    assert all(c.exited() for c in [*sup.shards, sup.router])


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_stale_socket_is_removed_before_start(sock_dir):
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(f"{sock_dir}/s-0")
    stale.close()  # the file stays behind, nothing listens
    sup = Supervisor(_plan(sock_dir, ranks=1), Timeouts(startup=STARTUP_S, poll=0.05))
    assert _run_with(sup, lambda: None) == 0


def test_shard_exit_at_startup_is_an_error_naming_it(sock_dir, caplog):
    sup = Supervisor(_plan(sock_dir, shard_extra=("--exit-now", "3")), Timeouts(startup=STARTUP_S, poll=0.05))
    assert sup.run() == 1
    assert "shard-0 exited with code 3 before it was ready" in caplog.text
    assert sup.router is None


def test_router_death_stops_everything(sock_dir, caplog):
    sup = Supervisor(_plan(sock_dir), Timeouts(startup=STARTUP_S, poll=0.05))
    errors: list[str] = []

    def kill_router() -> None:
        if not sup.router or not sup.router.pid:
            errors.append("no router")
            return
        os.kill(sup.router.pid, signal.SIGKILL)

    driver = _WhenServing(sup, kill_router)
    assert sup.run() == 1
    assert not driver.finish()
    assert not errors
    assert "router killed by SIGKILL; stopping" in caplog.text
    assert all(c.exited() for c in sup.shards)


def test_gives_up_after_max_restarts(sock_dir, caplog):
    sup = Supervisor(_plan(sock_dir, ranks=1), Timeouts(startup=STARTUP_S, poll=0.05), max_restarts=0)

    def kill_shard() -> None:
        os.kill(sup.shards[0].pid, signal.SIGKILL)

    driver = _WhenServing(sup, kill_shard)
    assert sup.run() == 1
    assert not driver.finish()
    assert "giving up" in caplog.text
    assert sup.router is not None and sup.router.exited()


@pytest.mark.parametrize("ranks", [1, 3])
def test_ranks_get_distinct_rank_env(sock_dir, ranks):
    plan = _plan(sock_dir, ranks=ranks)
    group = plan.shard_group()
    assert [s.env["RANK"] for s in group] == [str(r) for r in range(ranks)]
    assert len({s.env["MASTER_PORT"] for s in group}) == 1


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from launch.test_supervisor import _plan
from chameleon.tools.launch.supervisor import Supervisor, Timeouts
from pathlib import Path

sup = Supervisor(_plan(Path({sock!r}), ranks=2), Timeouts(startup={startup}, poll=0.05))
def serving():
    Path({pids!r}).write_text(" ".join(str(c.pid) for c in [*sup.shards, sup.router]))
sup.on_serving = serving
sup.run()
"""


def test_children_die_with_a_sigkilled_launcher(sock_dir):
    pids_file = sock_dir / "pids"
    code = DRIVER.format(tests=str(Path(__file__).parents[1]), sock=str(sock_dir), pids=str(pids_file),
                         startup=STARTUP_S)
    launcher = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for(lambda: pids_file.exists() or launcher.poll() is not None, "the stand-in launch")
        assert launcher.poll() is None, "the launcher exited early"
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == 3
    finally:
        launcher.kill()
        launcher.wait()
    _wait_for(lambda: all(_gone(p) for p in pids), "children to follow the launcher (PR_SET_PDEATHSIG)")
