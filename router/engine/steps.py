"""The serving loop's state and what one step does with it: Prefill the admitted, Decode the running,
route each Generation to its request; take requests out of the running batches (cancel, squash) and
fail them (refused alone, or all running ones on a shard fault).

`BatchSteps` is the state half of `ServingLoop` (router/engine/loop.py), which adds the task, the
commands and recovery; nothing outside the loop reads or changes this state.

Failures: a request the shards refuse (listed in the Prefill reply, an INVALID_ARGUMENT-class error of
the whole call, or a value the router cannot encode) fails alone with the shards' reason; only a shard
fault (connection, dead rank, diverged ranks) propagates, fails every running request
(`fail_running`), forgets what the shards held and marks the loop unhealthy.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from chameleon_pb import chameleon_pb2, generate_pb2

from chameleon.core.headroom import HeadroomReport, HeadroomTarget
from chameleon.core.sched import Plan
from router.engine.adapter_sync import AdapterSync, refused_error
from router.engine.batches import prefill_batch
from router.engine.health import HealthState
from router.engine.live import Live
from router.engine.policies import Policies
from router.engine.residency import Residency
from router.engine.shard_client import ShardClient, ShardError, StepResult
from router.engine.types import EngineError

log = logging.getLogger("router.engine")
StepObserver = Callable[[str, float, float], None]  # (method, inference_s, forward_s) after each step


class BatchSteps:
    """Owns the live requests (queued + running), the running CachedBatches, the scheduler, the memory
    manager, the adapter sync and the shards' last headroom reports."""

    def __init__(self, client: ShardClient, policies: Policies, num_pages: int, residency: Residency,
                 step_observers: Sequence[StepObserver] = (),
                 on_adapter_refused: Callable[[str], None] | None = None,
                 memory_headroom: HeadroomTarget | None = None) -> None:
        self._client, self._health = client, HealthState(client)
        self._policies = policies
        self._scheduler = policies.new_scheduler()
        self._memory_headroom = memory_headroom
        self._memory = policies.new_memory(num_pages)
        self._memory.set_headroom(memory_headroom)
        self._sync = AdapterSync(residency)
        self._block_size = policies.block_size
        self._step_observers = step_observers  # the caller's list: observers it adds later count too
        self._on_adapter_refused = on_adapter_refused
        self._lives: dict[int, Live] = {}
        self._batches: list[generate_pb2.CachedBatch] = []
        self._headroom: dict[int, chameleon_pb2.Headroom] = {}
        self._last_report = 0.0  # time.monotonic() of the last headroom report
        self._est_step_s = 0.05
        self._est_prefill_s_per_token = 0.0  # EMA of prefill time / prompt tokens (0: none measured yet)
        self._steps = 0
        self._replay_divergences = 0  # squashed re-runs whose swallowed tokens differed (see live.py)
        self._shard_faults = 0  # failures that failed the running requests and started a recovery
        self._unhealthy_since = self._next_recovery = 0.0
        self._batch_ids = itertools.count(1)
        self._cancelled: set[int] = set()

    # --- removing requests from the running batches -----------------------------------------------
    async def _filter_out(self, lives: Iterable[Live]) -> None:
        gone = {lv.rid for lv in lives}
        kept: list[generate_pb2.CachedBatch] = []
        for b in self._batches:
            keep = [i for i in b.request_ids if i not in gone]
            if len(keep) == len(b.request_ids):
                kept.append(b)
            elif not keep:
                await self._client.clear_cache(b.id)
            else:
                nb, rooms = await self._client.filter_batch(b.id, keep)
                self._on_headroom(rooms, time.monotonic())
                if nb is not None:
                    kept.append(nb)
        self._batches = kept
        for lv in lives:
            lv.batch_id = None

    async def _apply_cancels(self, now: float) -> None:
        ids, self._cancelled = self._cancelled, set()
        running = []
        for rid in ids:
            lv = self._lives.get(rid)
            if lv is None:
                continue
            if lv.batch_id is None:
                self._scheduler.cancel(rid, now)
                self._drop(lv, None)
            else:
                running.append(lv)
        if running:
            await self._filter_out(running)
            for lv in running:
                self._scheduler.cancel(lv.rid, now)
                self._memory.release(lv.rid, now)
                self._drop(lv, None)

    async def _squash(self, plan: Plan, now: float) -> None:
        lives = [self._lives[r.id] for r in plan.squash if r.id in self._lives]
        await self._filter_out(lives)
        for lv in lives:
            self._memory.release(lv.rid, now)
            lv.squashed()

    def _drop(self, lv: Live, error: EngineError | None) -> None:
        self._lives.pop(lv.rid, None)
        lv.stream.close(error)

    async def _fail_running(self, error: EngineError, reason: str) -> None:
        """A shard failed: fail every admitted request (in a shard batch, or holding memory while its
        adapter load or Prefill failed), clear the shards' batches, mark unhealthy."""
        now = time.monotonic()
        self._shard_faults += 1
        log.warning("shard fault: the running requests fail and recovery starts", extra={"reason": reason})
        mem = self._memory
        for lv in [lv for lv in self._lives.values() if lv.batch_id is not None or mem.admission(lv.rid)]:
            self._scheduler.cancel(lv.rid, now)
            self._memory.release(lv.rid, now)
            self._drop(lv, error)
        self._batches = []
        self._sync.forget_all()
        self._memory.take_offloads()
        self._health.mark_unhealthy(reason)
        self._unhealthy_since = self._next_recovery = now
        try:
            await self._client.clear_cache()
        except ShardError as exc:
            log.warning("ClearCache after a failure also failed: %s", exc)

    def fail_all(self, error: EngineError) -> None:
        """Shutdown without drain: every request (queued or running) ends with `error`."""
        now = time.monotonic()
        for lv in list(self._lives.values()):
            self._scheduler.cancel(lv.rid, now)
            self._memory.release(lv.rid, now)
            self._drop(lv, error)
        self._batches = []

    async def _load_adapters(self, plan: Plan, now: float) -> list[Live]:
        """The admitted requests that can be prefilled: those wanting an adapter the shards refused fail
        here, with the requests still queued for it (their sizes came from the files that changed);
        its idle cache entry goes, and the engine forgets its size facts once no request wants it."""
        refused = await self._sync.for_admissions(self._memory, plan)
        ok: list[Live] = []
        for req in plan.admit:
            lv, aid = self._lives[req.id], req.adapter_id
            if aid is not None and aid in refused:
                self._scheduler.cancel(lv.rid, now)
                self._memory.release(lv.rid, now)
                self._drop(lv, refused_error(aid, refused[aid]))
            else:
                ok.append(lv)
        for aid, exc in refused.items():
            for lv in [lv for lv in self._lives.values() if lv.batch_id is None and lv.req.adapter_id == aid]:
                self._scheduler.cancel(lv.rid, now)
                self._drop(lv, refused_error(aid, exc))
            entry = self._memory.cache.get(aid)
            if entry is not None and entry.refcount == 0:
                self._memory.evict(aid, now)
            if self._on_adapter_refused is not None and not any(
                    lv.req.adapter_id == aid for lv in self._lives.values()):
                self._on_adapter_refused(aid)
        return ok

    # --- prefill, decode ---------------------------------------------------------------------------
    async def _prefill(self, lives: Sequence[Live], plan: Plan, now: float) -> None:
        """Prefill the admitted requests as one new batch. A request the shards refuse fails alone with
        the shards' reason; its batch mates run. A shard fault propagates (recovery)."""
        pages = {lv.rid: plan.admissions[lv.rid].kv_pages for lv in lives}
        try:
            await self._prefill_batch(lives, pages, now)
        except (ShardError, _Unsendable) as exc:
            reason = _request_error(exc)
            if reason is None:
                raise
            if len(lives) == 1:
                self._refuse(lives[0], reason, now)
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
            batch = prefill_batch(bid, lives, [pages[lv.rid] for lv in lives], self._block_size)
        except (ValueError, TypeError) as exc:  # a value out of the wire format's range
            raise _Unsendable(f"a parameter cannot be sent to the shards: {exc}") from exc
        for lv in lives:
            lv.batch_id = bid
            if lv.first_admitted is None:
                lv.first_admitted = now
        t0 = time.perf_counter()
        try:
            res = await self._client.prefill(batch)
        except ShardError:
            for lv in lives:
                lv.batch_id = None
            raise
        tokens = sum(lv.core.input_tokens for lv in lives)
        if tokens:
            per_token = (time.perf_counter() - t0) / tokens
            self._est_prefill_s_per_token = per_token if not self._est_prefill_s_per_token \
                else 0.8 * self._est_prefill_s_per_token + 0.2 * per_token
        if res.batch is not None and res.batch.request_ids:
            self._batches.append(res.batch)
        for rid, reason in res.rejected.items():
            lv = self._lives.get(rid)
            if lv is not None and lv.batch_id == bid:
                self._refuse(lv, reason, now)
        self._observe("prefill", time.perf_counter() - t0, res)
        self._on_step(res)
        kept = set(res.batch.request_ids) if res.batch is not None else set()
        for lv in lives:  # neither finished, nor refused, nor in the returned batch: never hang on it
            if self._lives.get(lv.rid) is lv and lv.batch_id == bid and lv.rid not in kept:
                self._end(lv, EngineError("generation", "the shards returned no result for the request"),
                          now)

    def _refuse(self, lv: Live, reason: str, now: float) -> None:
        """The shards refused this request before running it: it fails alone, with their reason."""
        log.info("request refused by the shards", extra={"request_id": lv.rid, "reason": reason})
        self._end(lv, EngineError("validation", f"the shard refused the request: {reason}"), now)

    def _end(self, lv: Live, error: EngineError, now: float) -> None:
        """Fail one admitted request that is in no shard batch, releasing its memory and quota."""
        lv.batch_id = None
        self._scheduler.cancel(lv.rid, now)
        self._memory.release(lv.rid, now)
        self._drop(lv, error)

    async def _decode(self) -> None:
        t0 = time.perf_counter()
        res = await self._client.decode(self._batches)
        elapsed = time.perf_counter() - t0
        self._est_step_s = 0.8 * self._est_step_s + 0.2 * elapsed
        self._batches = [res.batch] if res.batch is not None and res.batch.request_ids else []
        self._observe("decode", elapsed, res)
        self._on_step(res)

    def _observe(self, method: str, inference_s: float, res: StepResult) -> None:
        for observer in self._step_observers:
            observer(method, inference_s, res.forward_ns / 1e9)

    def _on_step(self, res: StepResult) -> None:
        now = time.monotonic()
        self._steps += 1
        self._on_headroom(res.headroom, now)
        for gen in res.generations:
            lv = self._lives.get(gen.request_id)
            if lv is None or lv.batch_id is None:
                continue
            if lv.on_generation(gen, now):
                self._lives.pop(lv.rid, None)
                self._replay_divergences += lv.diverged
                self._scheduler.finish(lv.rid, now, gen.generated_text.generated_tokens)
                self._memory.release(lv.rid, now)

    def _on_headroom(self, rooms: Sequence[chameleon_pb2.Headroom], now: float) -> None:
        if not rooms:
            return
        self._last_report = now
        for h in rooms:
            self._headroom[h.rank] = h
        self._memory.on_headroom([HeadroomReport(
            rank=h.rank, free_device_bytes=h.free_device_bytes, pool_pages_total=h.pool_pages_total,
            pool_pages_used=h.pool_pages_used, page_bytes=h.page_bytes, kv_pages_used=h.kv_pages_used,
            adapter_pages_used=h.adapter_pages_used, total_device_bytes=h.total_device_bytes,
            pool_pages_allocated=h.pool_pages_allocated, segment_pages=h.segment_pages,
            resident_bytes=h.resident_bytes) for h in rooms], now)


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
