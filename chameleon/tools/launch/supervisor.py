"""The supervisor: start the shard group, then the router; watch them; drain and stop on a signal.

Lifecycle:
  start   remove stale sockets -> start every rank -> wait until every socket accepts -> start the
          router -> wait until its HTTP port accepts -> "serving".
  watch   a rank that exits takes the whole group down with it (the others would hang in the next
          collective): SIGTERM/SIGKILL the rest, remove the sockets, start the group again with the same
          arguments. The router is NOT restarted: it fails the requests that were in flight, reports
          unhealthy, and reconnects + re-warms once the sockets are back. The router exiting on its own
          ends the launcher (exit 1).
  stop    SIGINT/SIGTERM: SIGTERM to the router first (it refuses new requests and finishes in-flight
          ones, up to --drain-timeout), then the shards. A second signal skips the drain.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import FrameType
from typing import Any

from chameleon.tools.launch.plan import LaunchPlan
from chameleon.tools.launch.procs import (
    Child,
    Interrupted,
    LaunchError,
    ProcSpec,
    describe_exit,
    remove_stale_socket,
    stop_all,
    wait_ready,
)

log = logging.getLogger("chameleon.tools.launch")


@dataclass(frozen=True, slots=True)
class Timeouts:
    startup: float = 600.0  # a shard group or the router to start listening
    drain: float = 60.0  # the router to finish in-flight requests after SIGTERM
    stop: float = 5.0  # any process between SIGTERM and SIGKILL
    poll: float = 0.1


class StopRequests:
    """Counts SIGINT/SIGTERM received; the handlers only record, the supervisor loop acts."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            log.info("%s received: draining (send it again to stop at once)", name)
        else:
            log.warning("%s received again: stopping without drain", name)

    def install(self) -> Callable[[], None]:
        """Install the handlers; returns a function that puts the previous ones back."""
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


ProgressFactory = Callable[[int, str], AbstractContextManager[Any]]


def no_progress(total: int, desc: str) -> AbstractContextManager[Any]:
    return nullcontext(None)


class Supervisor:
    """Runs one launch: `run()` returns the launcher's exit code (0 after a requested stop)."""

    def __init__(self, plan: LaunchPlan, timeouts: Timeouts = Timeouts(), max_restarts: int = 10,
                 progress: ProgressFactory = no_progress,
                 on_serving: Callable[[], None] = lambda: None) -> None:
        self.plan = plan
        self.timeouts = timeouts
        self.max_restarts = max_restarts
        self.progress = progress
        self.on_serving = on_serving
        self.stops = StopRequests()
        self.shards: list[Child] = []
        self.router: Child | None = None
        self.restarts = 0

    def run(self) -> int:
        restore = self.stops.install()
        try:
            self.start_shards()
            if self.plan.router is not None:
                # owned before it is ready: a stop while it starts drains it like a serving one
                self.router = self._start((self.plan.router,))[0]
                self._wait([self.router], "router")
            self.on_serving()
            return self.watch()
        except Interrupted:
            return 0
        except LaunchError as exc:
            log.error("%s", exc)
            return 1
        finally:
            self.shutdown()
            restore()

    def start_shards(self) -> None:
        """Start a fresh shard group and wait until every rank listens."""
        specs = self.plan.shard_group()
        for spec in specs:
            if spec.unix_socket:
                remove_stale_socket(spec.unix_socket)
        self.shards = self._start(specs)  # owned before they are ready: a stop meanwhile stops them
        self._wait(self.shards, "shards ready")

    @staticmethod
    def _start(specs: tuple[ProcSpec, ...]) -> list[Child]:
        children = [Child(spec) for spec in specs]
        for child in children:
            child.start()
        return children

    def _wait(self, children: list[Child], desc: str) -> None:
        """Until every child listens (Interrupted on a stop request, LaunchError on a failure)."""
        with self.progress(len(children), desc) as bar:

            def ready(child: Child) -> None:
                log.info("%s is listening", child.name, extra={"event": "ready", "child": child.name})
                if bar is not None:
                    bar.update(1)

            wait_ready(children, self.timeouts.startup, abort=lambda: self.stops.count > 0,
                       on_ready=ready, poll_s=self.timeouts.poll)

    def watch(self) -> int:
        """Supervise until a stop is requested (0) or the router dies (1)."""
        while self.stops.count == 0:
            if self.router is not None and self.router.exited():
                log.error("router %s; stopping", describe_exit(self.router.poll()))
                return 1
            dead = [c for c in self.shards if c.exited()]
            if dead:
                self.recover(dead)
            time.sleep(self.timeouts.poll)
        return 0

    def recover(self, dead: list[Child]) -> None:
        """Restart the whole shard group after one of its ranks died (raises after --max-restarts)."""
        for child in dead:
            log.error("%s %s: restarting the shard group", child.name, describe_exit(child.poll()),
                      extra={"event": "shard_died", "child": child.name})
        while self.stops.count == 0:
            if self.restarts >= self.max_restarts:
                raise LaunchError(f"the shard group died {self.restarts + 1} times; giving up "
                                   "(see --max-restarts)")
            self.restarts += 1
            # The survivors of a broken group hold no state worth saving and may be stuck in a
            # collective that will never complete: no grace.
            stop_all(self.shards, 0.0, signal.SIGKILL)
            try:
                self.start_shards()
            except LaunchError as exc:
                log.error("shard group restart %d failed: %s", self.restarts, exc)
                time.sleep(min(float(self.restarts), 5.0))
                continue
            log.info("shard group restarted (%d so far); the router reconnects", self.restarts,
                     extra={"event": "shards_restarted", "restarts": self.restarts})
            return

    def shutdown(self) -> None:
        """Drain the router (SIGTERM, wait), then stop the shards; remove their sockets."""
        if self.router is not None and not self.router.exited():
            self.router.send(signal.SIGTERM)
            deadline = time.monotonic() + self.timeouts.drain
            while self.router.wait(self.timeouts.poll) is None:
                if self.stops.count > 1 or time.monotonic() > deadline:
                    log.warning("router still draining; killing it")
                    self.router.send(signal.SIGKILL)
                    self.router.wait(5.0)
                    break
            log.info("router %s", describe_exit(self.router.poll()))
        stop_all(self.shards, 0.0 if self.stops.count > 1 else self.timeouts.stop)
        for child in self.shards:
            if child.spec.unix_socket:
                try:
                    remove_stale_socket(child.spec.unix_socket)
                except LaunchError as exc:
                    log.warning("%s", exc)
        log.info("stopped", extra={"event": "stopped"})
