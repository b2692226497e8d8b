"""The serving loop: one asyncio task owns every piece of serving state (TGI v3 continuous batching).

Per iteration (`now` = time.monotonic(), passed to the policy core):
  1. cancellations: FilterBatch the running batches without them, release memory and quota;
  2. commands (pre-warm, unload, liveness check; see the command interface below) run between steps,
     never during one;
  3. plan = scheduler.schedule(now, ctx) — the scheduler admits through MemoryManager.try_admit;
  4. squashed requests: FilterBatch them out, release their memory; they re-run from scratch later
     and swallow the tokens already streamed (see live.py);
  5. offload evicted/dropped adapters on every rank, then load the admitted requests' adapters into
     their router-assigned pages (adapter_sync.py; an adapter the shard refuses fails only its requests);
  6. Prefill the admitted as a new batch, then Decode every running batch together (steps.py);
  7. route each Generation to its request's stream; finish -> scheduler.finish + memory.release;
  8. flush offloads, prefetch queued requests' adapters into free pages;
  9. elastic pool: when the memory manager asks for it (headroom below or well above the target, see
     chameleon/core/headroom.py and elastic.py), ResizePool on every rank.
Headroom in every reply (steps, adapter loads/offloads, resizes) goes to memory.on_headroom.
A failed shard RPC fails the requests that were
running with EngineError("generation"), ClearCache, forgets what the shards held, marks unhealthy; the
loop then calls `recover` about twice a second and applies the `RecoveryResult` it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from chameleon.core.adapters import AdapterSpec
from chameleon.core.headroom import HeadroomTarget
from chameleon.core.sched import Plan, ScheduleContext
from router.engine.health import HealthState
from router.engine.live import Live
from router.engine.policies import Policies
from router.engine.pool_resize import PoolResizer
from router.engine.recovery import RecoveryResult
from router.engine.residency import Residency
from router.engine.shard_client import ShardClient, ShardError
from router.engine.stats import headroom_stats
from router.engine.steps import BatchSteps, StepObserver
from router.engine.types import EngineError

log = logging.getLogger("router.engine")
T = TypeVar("T")
Command = Callable[[], Awaitable[Any]]
Recover = Callable[[], Awaitable[RecoveryResult | None]]  # one attempt (see recovery.py)


class ServingLoop(BatchSteps):
    """The one owner of the serving state (see steps.py). Other modules use its methods: `submit`,
    `cancel`, the commands (`prewarm`, `unload`, `check_health`, `with_kv_pages`), `stats()` and the
    read-only properties; the constructor takes every collaborator (no attribute is assigned from
    outside).

    `recover` is one recovery attempt (router/engine/recovery.py): the loop renews its pool when the
    shards were restarted and serves through the new client once they answer. `on_adapter_refused` is
    told when the shards refused an adapter's files and no request wants it any more (the engine then
    forgets its size facts)."""

    def __init__(self, client: ShardClient, policies: Policies, num_pages: int, residency: Residency, *,
                 prefetch_depth: int = 32, recover: Recover | None = None,
                 recovery_timeout_s: float = 60.0, on_adapter_refused: Callable[[str], None] | None = None,
                 step_observers: Sequence[StepObserver] = (),
                 memory_headroom: HeadroomTarget | None = None) -> None:
        super().__init__(client, policies, num_pages, residency, step_observers, on_adapter_refused,
                         memory_headroom)
        self._resizer = PoolResizer(poll=memory_headroom is not None)
        self._recover, self._recovery_timeout_s = recover, recovery_timeout_s
        self._prefetch_depth = prefetch_depth
        self._schedule_s = self._schedule_max_s = 0.0
        self._schedule_samples: deque[float] = deque(maxlen=4096)  # recent schedule() durations, s
        self._host_samples: deque[float] = deque(maxlen=4096)  # iteration time outside shard RPCs, s
        self._commands: deque[tuple[Command, asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._stopping = False

    # --- called by the Engine (same event loop, between awaits of the loop task) ---------------
    def submit(self, live: Live, now: float) -> None:
        self._lives[live.rid] = live
        self._scheduler.add(live.core, now)
        self._wake.set()

    def cancel(self, rid: int) -> None:
        if rid in self._lives:
            self._cancelled.add(rid)
            self._wake.set()

    async def call(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run `command` inside the loop task between two steps; returns its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._commands.append((command, fut))
        self._wake.set()
        return await fut

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Requests queued or running."""
        return len(self._lives)

    @property
    def idle(self) -> bool:
        """No request queued or running and no batch held by the shards."""
        return not self._lives and not self._batches

    @property
    def healthy(self) -> bool:
        return self._health.healthy

    @property
    def last_error(self) -> str | None:
        return self._health.last_error

    # --- commands: each runs between two steps ---------------------------------------------------
    async def check_health(self) -> bool:
        """Health RPC (while healthy; the liveness Prefill otherwise)."""
        return await self.call(self._health.check)

    async def prewarm(self, spec: AdapterSpec) -> None:
        """Make the adapter resident now (see AdapterSync.prewarm)."""
        await self.call(lambda: self._sync.prewarm(self._memory, spec))

    async def unload(self, adapter_id: str) -> bool:
        """Drop the adapter from the cache and the shards (see AdapterSync.unload)."""
        return await self.call(lambda: self._sync.unload(self._memory, adapter_id))

    async def with_kv_pages(self, n_pages: int, use: Callable[[list[int]], Awaitable[T]]) -> T:
        """Run `use(pages)` between two steps on `n_pages` KV pages borrowed from the pool (benchmarks
        driving the shards directly). EngineError overloaded when the pool has no room."""
        async def command() -> T:
            pages = self._memory.pool.alloc_kv(-1, n_pages)
            if pages is None:
                raise EngineError("overloaded", f"no {n_pages} free pages to borrow")
            try:
                return await use(pages)
            finally:
                self._memory.pool.free_kv(-1)

        return await self.call(command)

    async def release_shards(self) -> None:
        """After `run()` returned: offload every adapter the shards hold (another loop takes over)."""
        await self._sync.offload_all()

    def adapter_refcounts(self) -> dict[str, int]:
        """Resident adapters -> the running requests using each."""
        return {e.adapter_id: e.refcount for e in self._memory.cache.entries()}

    def check_integrity(self) -> None:
        """The memory manager's invariants (tests)."""
        self._memory.check_integrity()

    # --- figures -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The loop's part of `Engine.stats()` (keys in router/engine/stats.py)."""
        mem, sched = self._memory, self._scheduler
        running = sum(1 for lv in self._lives.values() if lv.batch_id is not None)
        by_state: dict[bool, set[str]] = {True: set(), False: set()}  # in a batch -> adapter ids
        queued_tokens = 0  # prompt tokens of the requests not in a batch yet
        for lv in self._lives.values():
            if lv.batch_id is None:
                queued_tokens += lv.core.input_tokens
            if lv.core.adapter_id is not None:
                by_state[lv.batch_id is not None].add(lv.core.adapter_id)
        return {
            "requests": {"in_flight": len(self._lives), "queued": sched.num_waiting(), "running": running,
                         "queued_prompt_tokens": queued_tokens,
                         "running_adapters": sorted(by_state[True]),
                         "waiting_adapters": sorted(by_state[False])},
            "scheduler": sched.stats(),
            "cache": mem.stats(),
            "pool": {"num_pages": mem.pool.num_pages, "by_tenant": mem.pool.used_by_tenant(),
                     "free": mem.pool.free_pages(), **self._pool_bytes()},
            "adapters": self._sync.stats(mem),
            "headroom": headroom_stats(self._headroom),
            "loop": {"steps": self._steps, "schedule_seconds_last": self._schedule_s,
                     "schedule_seconds_max": self._schedule_max_s, "est_step_seconds": self._est_step_s,
                     "healthy": self._health.healthy, "replay_divergences": self._replay_divergences,
                     "shard_faults": self._shard_faults, **self._resizer.stats()},
        }

    def _pool_bytes(self) -> dict[str, int]:
        """The elastic pool in bytes of one rank (from the reports' page size; {} before any report)."""
        page = max((h.page_bytes for h in self._headroom.values()), default=0)
        if not page:
            return {}
        el = self._memory.elastic
        return {"budget_bytes": el.budget * page, "allocated_bytes": el.allocated * page}

    def samples(self, clear: bool = False) -> dict[str, list[float]]:
        """Recent schedule() durations and host times per iteration (seconds); `clear` empties them."""
        out = {"schedule": list(self._schedule_samples), "host": list(self._host_samples)}
        if clear:
            self._schedule_samples.clear()
            self._host_samples.clear()
        return out

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            progressed = False
            try:
                healthy = self._health.healthy
                progressed = await (self._iteration() if healthy else self._recovering())
            except ShardError as exc:
                await self._fail_running(EngineError("generation", f"generation failed: {exc}"), str(exc))
            except Exception as exc:  # a bug must not leave clients hanging
                log.exception("serving loop iteration failed")
                err = EngineError("generation", f"internal router error: {exc!r}")
                await self._fail_running(err, repr(exc))
            if not progressed and not self._stopping:
                timeout = 0.05 if self._scheduler.num_waiting() else (1.0 if self._resizer.poll else None)
                if not self._health.healthy:
                    timeout = 0.5
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _housekeeping(self, now: float) -> bool:
        """Cancellations, then commands; True when there was any."""
        work = bool(self._cancelled or self._commands)
        if self._cancelled:
            await self._apply_cancels(now)
        while self._commands:
            command, fut = self._commands.popleft()
            try:
                result = await command()
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)
        return work

    async def _iteration(self) -> bool:
        t0, rpc0 = time.perf_counter(), self._client.rpc_s
        now = time.monotonic()
        work = await self._housekeeping(now)
        plan = self._schedule(now)
        if plan.squash:
            await self._squash(plan, now)
        admitted = await self._load_adapters(plan, now)
        if admitted:
            await self._prefill(admitted, plan, now)
        if self._batches:
            await self._decode()
        waiting = self._scheduler.waiting(self._prefetch_depth)
        await self._sync.prefetch(self._memory, waiting, time.monotonic())
        self._on_headroom(self._sync.take_headroom(), time.monotonic())
        if not self._batches:
            rooms = await self._resizer.idle_headroom(self._client, self._last_report)
            self._on_headroom(rooms, time.monotonic())
        self._on_headroom(await self._resizer.resize(self._client, self._memory), time.monotonic())
        if plan.admit or self._batches:
            self._host_samples.append(time.perf_counter() - t0 - (self._client.rpc_s - rpc0))
        return work or bool(plan.admit or self._batches)

    def _schedule(self, now: float) -> Plan:
        t0 = time.perf_counter()
        ctx = ScheduleContext(self._memory, self._scheduler.running(), est_step_s=self._est_step_s,
                              est_prefill_s_per_token=self._est_prefill_s_per_token)
        plan = self._scheduler.schedule(now, ctx)
        self._schedule_s = time.perf_counter() - t0
        self._schedule_samples.append(self._schedule_s)
        self._schedule_max_s = max(self._schedule_max_s, self._schedule_s)
        return plan

    # --- recovery ------------------------------------------------------------------------------
    async def _recovering(self) -> bool:
        """Unhealthy: queued requests wait while recovery is retried; after `recovery_timeout_s`
        they fail as unavailable (new ones are refused by the Engine meanwhile)."""
        now = time.monotonic()
        work = await self._housekeeping(now)
        if self._recover is None or now < self._next_recovery:
            return work
        if await self._apply(await self._recover()):
            return True
        self._next_recovery = time.monotonic() + 0.5
        if now - self._unhealthy_since > self._recovery_timeout_s and self._lives:
            why = f"the shards did not recover in {self._recovery_timeout_s:.0f}s: {self._health.last_error}"
            self.fail_all(EngineError("unavailable", why))
        return work

    async def _apply(self, result: RecoveryResult | None) -> bool:
        """Renew the pool when the shards were restarted; serve through the new client once they
        answer. True when the loop is healthy again."""
        if result is None:
            return False
        if result.info is not None:
            self._renew_memory(result.info.num_pages)
        if result.client is None:
            return False
        old, self._client = self._client, result.client
        self._sync.rebind(result.client)
        self._headroom.clear()  # the dead ranks' last reports; fresh ones come with the next step
        await old.close()
        self._health = HealthState(result.client)
        log.info("shards recovered", extra={"event": "shards_recovered"})
        return True

    def _renew_memory(self, num_pages: int) -> None:
        """After the shards were re-warmed: a fresh pool and cache; queued requests move to a fresh
        scheduler when the pool size changed (its quotas depend on it)."""
        changed = num_pages != self._memory.pool.num_pages
        self._memory = self._policies.new_memory(num_pages)
        self._memory.set_headroom(self._memory_headroom)
        if changed:
            waiting, self._scheduler = self._scheduler.waiting(), self._policies.new_scheduler()
            for req in waiting:
                self._scheduler.add(req, req.arrival)
