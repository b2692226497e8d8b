"""The serving loop: one asyncio task owns every piece of serving state (TGI v3 continuous batching).

Per iteration (`now` = time.monotonic(), passed to the policy core):
  1. cancellations: FilterBatch the running batches without them, release memory and quota;
  2. admin commands (pre-warm, unload, liveness check) run between steps, never during one;
  3. plan = scheduler.schedule(now, ctx) — the scheduler admits through MemoryManager.try_admit;
  4. squashed requests: FilterBatch them out, release their memory; they re-run from scratch later
     and swallow the tokens already streamed (see live.py);
  5. offload evicted/dropped adapters on every rank, then load the admitted requests' adapters into
     their router-assigned pages (an adapter the shard refuses fails only its requests);
  6. Prefill the admitted as a new batch, then Decode every running batch together;
  7. route each Generation to its request's stream; finish -> scheduler.finish + memory.release;
  8. flush offloads, prefetch queued requests' adapters into free pages.
Headroom in every reply goes to memory.on_headroom. A failed shard RPC fails the requests that were
running with EngineError("generation"), ClearCache, forgets what the shards held, marks unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from chameleon_pb import chameleon_pb2, generate_pb2

from chameleon.headroom import HeadroomReport
from chameleon.memory_manager import MemoryManager
from chameleon.sched import Plan, ScheduleContext, Scheduler
from router.engine.adapter_sync import load_for_admissions, prefetch
from router.engine.batches import prefill_batch
from router.engine.health import HealthState
from router.engine.live import Live
from router.engine.residency import Residency, ShardAdapters
from router.engine.shard_client import ShardClient, ShardError, StepResult
from router.engine.types import EngineError

log = logging.getLogger("router.engine")
Command = Callable[[], Awaitable[Any]]


class ServingLoop:
    """Owns lives (queued + running requests), running CachedBatches and the adapter mirror."""

    def __init__(self, client: ShardClient, scheduler: Scheduler, memory: MemoryManager,
                 health: HealthState, block_size: int, prefetch_depth: int = 32,
                 recover: Callable[[], Awaitable[bool]] | None = None, recovery_timeout_s: float = 60.0,
                 residency: Residency | None = None) -> None:
        self.client, self.scheduler, self.memory, self.health = client, scheduler, memory, health
        self._recover, self.recovery_timeout_s = recover, recovery_timeout_s
        self._unhealthy_since = 0.0
        self._next_recovery = 0.0
        self.residency: Residency = residency if residency is not None else ShardAdapters(client)
        self.block_size, self.prefetch_depth = block_size, prefetch_depth
        self.lives: dict[int, Live] = {}
        self.batches: list[generate_pb2.CachedBatch] = []
        self.headroom: dict[int, chameleon_pb2.Headroom] = {}
        self.est_step_s = 0.05
        self.est_prefill_s_per_token = 0.0  # EMA of prefill time / prompt tokens (0: none measured yet)
        self.schedule_s = self.schedule_max_s = 0.0
        self.schedule_samples: deque[float] = deque(maxlen=4096)  # recent schedule() durations, s
        self.host_samples: deque[float] = deque(maxlen=4096)  # iteration time outside shard RPCs, s
        self.steps = 0
        self.replay_divergences = 0  # squashed re-runs whose swallowed tokens differed (see live.py)
        self.shard_faults = 0  # failures that failed the running requests and started a recovery
        self._batch_ids = itertools.count(1)
        self._cancelled: set[int] = set()
        self._commands: deque[tuple[Command, asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        # Set by the Engine: forget an adapter's size facts (after the shards refused its files).
        self.forget_adapter: Callable[[str], None] | None = None
        # Set by the Engine: called with (method, inference_s, forward_s) after every Prefill/Decode.
        self.step_observers: list[Callable[[str, float, float], None]] = []

    # --- called by the Engine (same event loop, between awaits of the loop task) ---------------
    def submit(self, live: Live, now: float) -> None:
        self.lives[live.rid] = live
        self.scheduler.add(live.core, now)
        self._wake.set()

    def cancel(self, rid: int) -> None:
        if rid in self.lives:
            self._cancelled.add(rid)
            self._wake.set()

    async def call(self, command: Command) -> Any:
        """Run `command` inside the loop task between two steps; returns its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._commands.append((command, fut))
        self._wake.set()
        return await fut

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            progressed = False
            try:
                healthy = self.health.healthy
                progressed = await (self._iteration() if healthy else self._recovering())
            except ShardError as exc:
                await self.fail_running(EngineError("generation", f"generation failed: {exc}"), str(exc))
            except Exception as exc:  # a bug must not leave clients hanging
                log.exception("serving loop iteration failed")
                err = EngineError("generation", f"internal router error: {exc!r}")
                await self.fail_running(err, repr(exc))
            if not progressed and not self._stopping:
                timeout = 0.05 if self.scheduler.num_waiting() else None
                if not self.health.healthy:
                    timeout = 0.5
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _housekeeping(self, now: float) -> bool:
        """Cancellations, then admin commands; True when there was any."""
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
        t0, rpc0 = time.perf_counter(), self.client.rpc_s
        now = time.monotonic()
        work = await self._housekeeping(now)
        plan = self._schedule(now)
        if plan.squash:
            await self._squash(plan, now)
        admitted = await load_for_admissions(self, plan, now)
        if admitted:
            await self._prefill(admitted, plan, now)
        if self.batches:
            await self._decode()
        await prefetch(self, time.monotonic())
        if plan.admit or self.batches:
            self.host_samples.append(time.perf_counter() - t0 - (self.client.rpc_s - rpc0))
        return work or bool(plan.admit or self.batches)

    async def _recovering(self) -> bool:
        """Unhealthy: queued requests wait while recovery is retried; after `recovery_timeout_s`
        they fail as unavailable (new ones are refused by the Engine meanwhile)."""
        now = time.monotonic()
        work = await self._housekeeping(now)
        if self._recover is None or now < self._next_recovery:
            return work
        if await self._recover():
            self.health.healthy, self.health.last_error = True, None
            return True
        self._next_recovery = time.monotonic() + 0.5
        if now - self._unhealthy_since > self.recovery_timeout_s and self.lives:
            why = f"the shards did not recover in {self.recovery_timeout_s:.0f}s: {self.health.last_error}"
            self.fail_all(EngineError("unavailable", why))
        return work

    def rebind(self, client: ShardClient) -> None:
        """Serve through a new shard client (after recovery)."""
        self.client = client
        self.health = HealthState(client, healthy=False)
        self.residency.rebind(client)
        self.headroom.clear()  # the dead ranks' last reports; fresh ones come with the next step

    def _schedule(self, now: float) -> Plan:
        t0 = time.perf_counter()
        ctx = ScheduleContext(self.memory, self.scheduler.running(), est_step_s=self.est_step_s,
                              est_prefill_s_per_token=self.est_prefill_s_per_token)
        plan = self.scheduler.schedule(now, ctx)
        self.schedule_s = time.perf_counter() - t0
        self.schedule_samples.append(self.schedule_s)
        self.schedule_max_s = max(self.schedule_max_s, self.schedule_s)
        return plan

    # --- removing requests from the running batches -----------------------------------------------
    async def _filter_out(self, lives: Iterable[Live]) -> None:
        gone = {lv.rid for lv in lives}
        kept: list[generate_pb2.CachedBatch] = []
        for b in self.batches:
            keep = [i for i in b.request_ids if i not in gone]
            if len(keep) == len(b.request_ids):
                kept.append(b)
            elif not keep:
                await self.client.clear_cache(b.id)
            else:
                nb, rooms = await self.client.filter_batch(b.id, keep)
                self._on_headroom(rooms, time.monotonic())
                if nb is not None:
                    kept.append(nb)
        self.batches = kept
        for lv in lives:
            lv.batch_id = None

    async def _apply_cancels(self, now: float) -> None:
        ids, self._cancelled = self._cancelled, set()
        running = []
        for rid in ids:
            lv = self.lives.get(rid)
            if lv is None:
                continue
            if lv.batch_id is None:
                self.scheduler.cancel(rid, now)
                self.drop(lv, None)
            else:
                running.append(lv)
        if running:
            await self._filter_out(running)
            for lv in running:
                self.scheduler.cancel(lv.rid, now)
                self.memory.release(lv.rid, now)
                self.drop(lv, None)

    async def _squash(self, plan: Plan, now: float) -> None:
        lives = [self.lives[r.id] for r in plan.squash if r.id in self.lives]
        await self._filter_out(lives)
        for lv in lives:
            self.memory.release(lv.rid, now)
            lv.squashed()

    def drop(self, lv: Live, error: EngineError | None) -> None:
        self.lives.pop(lv.rid, None)
        lv.stream.close(error)

    async def fail_running(self, error: EngineError, reason: str) -> None:
        """A shard failed: fail every running request, clear the shards' batches, mark unhealthy."""
        now = time.monotonic()
        self.shard_faults += 1
        log.warning("shard fault: the running requests fail and recovery starts", extra={"reason": reason})
        for lv in [lv for lv in self.lives.values() if lv.batch_id is not None]:
            self.scheduler.cancel(lv.rid, now)
            self.memory.release(lv.rid, now)
            self.drop(lv, error)
        self.batches = []
        self.residency.forget_all()
        self.memory.take_offloads()
        self.health.mark_unhealthy(reason)
        self._unhealthy_since = self._next_recovery = now
        try:
            await self.client.clear_cache()
        except ShardError as exc:
            log.warning("ClearCache after a failure also failed: %s", exc)

    def fail_all(self, error: EngineError) -> None:
        """Shutdown without drain: every request (queued or running) ends with `error`."""
        now = time.monotonic()
        for lv in list(self.lives.values()):
            self.scheduler.cancel(lv.rid, now)
            self.memory.release(lv.rid, now)
            self.drop(lv, error)
        self.batches = []

    # --- adapters, prefill, decode ---------------------------------------------------------------
    async def _prefill(self, lives: Sequence[Live], plan: Plan, now: float) -> None:
        """Prefill the admitted requests as one new batch. A request the shards refuse (listed in the
        reply, or an INVALID_ARGUMENT-class error of the whole call) fails alone with the shards'
        reason; its batch mates run. Only a shard fault (connection, dead rank, diverged ranks)
        propagates and puts the loop into recovery."""
        pages = {lv.rid: plan.admissions[lv.rid].kv_pages for lv in lives}
        try:
            await self._prefill_batch(lives, pages, now)
        except (ShardError, _Unsendable) as exc:
            if _request_error(exc) is None:
                raise
            if len(lives) == 1:
                self._refuse(lives[0], _request_error(exc) or "", now)
                return
            for lv in lives:  # find the refused request(s): the others still run, one batch each
                try:
                    await self._prefill_batch([lv], pages, now)
                except (ShardError, _Unsendable) as one:
                    reason = _request_error(one)
                    if reason is None:
                        raise
                    self._refuse(lv, reason, now)

    async def _prefill_batch(self, lives: Sequence[Live], pages: dict[int, list[int]], now: float) -> None:
        bid = next(self._batch_ids)
        try:
            batch = prefill_batch(bid, lives, [pages[lv.rid] for lv in lives], self.block_size)
        except (ValueError, TypeError) as exc:  # a value out of the wire format's range
            raise _Unsendable(f"a parameter cannot be sent to the shards: {exc}") from exc
        for lv in lives:
            lv.batch_id = bid
            if lv.first_admitted is None:
                lv.first_admitted = now
        t0 = time.perf_counter()
        try:
            res = await self.client.prefill(batch)
        except ShardError:
            for lv in lives:
                lv.batch_id = None
            raise
        tokens = sum(lv.core.input_tokens for lv in lives)
        if tokens:
            per_token = (time.perf_counter() - t0) / tokens
            self.est_prefill_s_per_token = per_token if not self.est_prefill_s_per_token \
                else 0.8 * self.est_prefill_s_per_token + 0.2 * per_token
        if res.batch is not None and res.batch.request_ids:
            self.batches.append(res.batch)
        for rid, reason in res.rejected.items():
            lv = self.lives.get(rid)
            if lv is not None and lv.batch_id == bid:
                self._refuse(lv, reason, now)
        self._observe("prefill", time.perf_counter() - t0, res)
        self._on_step(res)
        kept = set(res.batch.request_ids) if res.batch is not None else set()
        for lv in lives:  # neither finished, nor refused, nor in the returned batch: never hang on it
            if self.lives.get(lv.rid) is lv and lv.batch_id == bid and lv.rid not in kept:
                self._end(lv, EngineError("generation", "the shards returned no result for the request"),
                          now)

    def _refuse(self, lv: Live, reason: str, now: float) -> None:
        """The shards refused this request before running it: it fails alone, with their reason."""
        log.info("request refused by the shards", extra={"request_id": lv.rid, "reason": reason})
        self._end(lv, EngineError("validation", f"the shard refused the request: {reason}"), now)

    def _end(self, lv: Live, error: EngineError, now: float) -> None:
        """Fail one admitted request that is in no shard batch, releasing its memory and quota."""
        lv.batch_id = None
        self.scheduler.cancel(lv.rid, now)
        self.memory.release(lv.rid, now)
        self.drop(lv, error)

    async def _decode(self) -> None:
        t0 = time.perf_counter()
        res = await self.client.decode(self.batches)
        elapsed = time.perf_counter() - t0
        self.est_step_s = 0.8 * self.est_step_s + 0.2 * elapsed
        self.batches = [res.batch] if res.batch is not None and res.batch.request_ids else []
        self._observe("decode", elapsed, res)
        self._on_step(res)

    def _observe(self, method: str, inference_s: float, res: StepResult) -> None:
        for observer in self.step_observers:
            observer(method, inference_s, res.forward_ns / 1e9)

    def _on_step(self, res: StepResult) -> None:
        now = time.monotonic()
        self.steps += 1
        self._on_headroom(res.headroom, now)
        for gen in res.generations:
            lv = self.lives.get(gen.request_id)
            if lv is None or lv.batch_id is None:
                continue
            if lv.on_generation(gen, now):
                self.lives.pop(lv.rid, None)
                self.replay_divergences += lv.diverged
                self.scheduler.finish(lv.rid, now, gen.generated_text.generated_tokens)
                self.memory.release(lv.rid, now)

    def _on_headroom(self, rooms: Sequence[chameleon_pb2.Headroom], now: float) -> None:
        if not rooms:
            return
        for h in rooms:
            self.headroom[h.rank] = h
        self.memory.on_headroom([HeadroomReport(
            rank=h.rank, free_device_bytes=h.free_device_bytes, pool_pages_total=h.pool_pages_total,
            pool_pages_used=h.pool_pages_used, page_bytes=h.page_bytes, kv_pages_used=h.kv_pages_used,
            adapter_pages_used=h.adapter_pages_used) for h in rooms], now)


class _Unsendable(ValueError):
    """A request the router cannot encode for the shards (a value outside the wire format's range)."""


def _request_error(exc: Exception) -> str | None:
    """The reason to give the client when `exc` refuses the request(s) of a Prefill, not the shards;
    None when `exc` is a shard fault."""
    if isinstance(exc, _Unsendable):
        return str(exc)
    if isinstance(exc, ShardError) and exc.is_request_error:
        return exc.detail
    return None
