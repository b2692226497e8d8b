"""Tell the shards what the MemoryManager decided about adapters, in a safe order.

`AdapterSync` belongs to the serving loop and owns the adapter mirror (`Residency`); the loop hands it
the memory manager and the plan, and it answers with what the shards refused. Order matters because
page ids are reused: every offload (admission evictions, NoCache drops, headroom shrinks —
`memory.take_offloads()`) is sent before any load, since a load or a KV block may reuse the pages just
freed. An adapter the shard refuses (missing, corrupt, mismatched: INVALID_ARGUMENT) is reported back
(the loop fails only the requests that wanted it) and leaves no idle cache entry; any other shard
error propagates and fails the step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from chameleon.core.adapters import AdapterSpec
from chameleon.core.memory_manager import MemoryManager
from chameleon.core.request import Request
from chameleon.core.sched import Plan
from router.engine.residency import Residency
from router.engine.shard_client import ShardClient, ShardError
from router.engine.types import EngineError

log = logging.getLogger("router.engine")


def refused_error(adapter_id: str, exc: ShardError) -> EngineError:
    """What a request for an adapter the shards refused fails with."""
    return EngineError("validation", f"adapter {adapter_id!r} cannot be loaded: {exc.detail}")


class AdapterSync:
    def __init__(self, residency: Residency) -> None:
        self._residency = residency

    def rebind(self, client: ShardClient) -> None:
        """Talk to new shards (after recovery): nothing they hold is known."""
        self._residency.rebind(client)

    def forget_all(self) -> None:
        """After a shard failure: every adapter is loaded again before its next use."""
        self._residency.forget_all()

    async def for_admissions(self, memory: MemoryManager, plan: Plan) -> dict[str, ShardError]:
        """Offload what was dropped, load the admitted requests' adapters; returns the adapters the
        shards refused (the loop fails the requests that want them)."""
        evicted = [a for adm in plan.admissions.values() for a in adm.evicted]
        await self._residency.offload([*memory.take_offloads(), *evicted])
        await self.relocate(memory)
        bad: dict[str, ShardError] = {}
        for req in plan.admit:
            aid = req.adapter_id
            if aid is None or aid in bad:
                continue
            entry = memory.cache.get(aid)
            if entry is None:
                raise RuntimeError(f"admitted request {req.id} but adapter {aid!r} is not resident")
            try:
                await self._residency.ensure(aid, entry.pages, entry.spec.nbytes)
            except ShardError as exc:
                if not exc.is_request_error:
                    raise
                bad[aid] = exc
        return bad

    async def prefetch(self, memory: MemoryManager, waiting: Sequence[Request], now: float) -> None:
        """Flush offloads, then load queued requests' adapters into free pages (never evicting), keeping
        the head request's KV need free."""
        await self._residency.offload(memory.take_offloads())
        await self.relocate(memory)
        if not waiting:
            return
        reserve = memory.kv_pages_for(waiting[0])
        for aid, pages in memory.prefetch([r.adapter_id for r in waiting], now, reserve_pages=reserve):
            try:
                await self._residency.ensure(aid, pages, memory.adapters(aid).nbytes)
            except ShardError as exc:
                if not exc.is_request_error:
                    raise
                log.warning("prefetch of adapter %r refused by the shard: %s", aid, exc.detail)
                entry = memory.cache.get(aid)
                if entry is not None and entry.refcount == 0:
                    memory.evict(aid, now)

    async def relocate(self, memory: MemoryManager) -> None:
        """Adapters a pool shrink moved below the new limit: offload them from their old pages (freed,
        maybe reused), load them at the new ones. One the shards refuse now is dropped."""
        moved = memory.take_relocations()
        await self._residency.offload([aid for aid, _ in moved])
        for aid, pages in moved:
            try:
                await self._residency.ensure(aid, pages, memory.adapters(aid).nbytes)
            except ShardError as exc:
                if not exc.is_request_error:
                    raise
                entry = memory.cache.get(aid)
                if entry is not None and entry.refcount == 0:
                    memory.evict(aid, time.monotonic())

    def take_headroom(self) -> list[Any]:
        """Headroom from the adapter calls since the last call (chameleon.v1.Headroom, last per rank)."""
        return self._residency.take_headroom()

    async def prewarm(self, memory: MemoryManager, spec: AdapterSpec) -> None:
        """Make the adapter resident on every rank now (into free pages; idle cache is not evicted)."""
        adapter_id = spec.adapter_id
        await self._residency.offload(memory.take_offloads())
        if adapter_id not in memory.cache:
            loads = memory.prefetch([adapter_id], time.monotonic(), max_loads=1, depth=1)
            if not loads:
                raise EngineError("overloaded", f"no free memory to pre-warm adapter {adapter_id!r} "
                                                f"({spec.pages} pages needed, {memory.available()} free)")
        entry = memory.cache.get(adapter_id)
        assert entry is not None  # just inserted by prefetch, or already resident
        try:
            await self._residency.ensure(adapter_id, entry.pages, spec.nbytes)
        except ShardError as exc:
            if entry.refcount == 0:
                memory.evict(adapter_id, time.monotonic())
            kind = "validation" if exc.is_request_error else "generation"
            raise EngineError(kind, f"adapter {adapter_id!r} cannot be loaded: {exc.detail}") from exc

    async def unload(self, memory: MemoryManager, adapter_id: str) -> bool:
        """Drop the adapter from the cache and the shards; False when it was not resident. Refused
        (EngineError validation) while running requests use it."""
        entry = memory.cache.get(adapter_id)
        if entry is None:
            return False
        if entry.refcount > 0:
            raise EngineError("validation", f"adapter {adapter_id!r} is in use by {entry.refcount} "
                                            "running requests; retry when they finish")
        memory.evict(adapter_id, time.monotonic())
        await self._residency.offload([adapter_id])
        return True

    async def offload_all(self) -> None:
        """Offload every adapter the shards hold (before another loop takes over the pool)."""
        await self._residency.offload(self._residency.resident())

    def stats(self, memory: MemoryManager) -> dict[str, Any]:
        res = self._residency
        return {"resident": {e.adapter_id: len(e.pages) for e in memory.cache.entries()},
                "loads": res.loads, "offloads": res.offloads, "bytes_loaded": res.bytes_loaded,
                "load_seconds": res.load_s}
