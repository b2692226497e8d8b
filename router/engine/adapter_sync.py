"""Tell the shards what the MemoryManager decided about adapters, in a safe order.

Order matters because page ids are reused: every offload (admission evictions, NoCache drops,
headroom shrinks — `memory.take_offloads()`) is sent before any load, since a load or a KV block
may reuse the pages just freed. An adapter the shard refuses (missing, corrupt, mismatched:
INVALID_ARGUMENT) fails only the requests that wanted it and leaves nothing cached (no cache entry,
no pages, no size facts); any other shard error propagates and fails the step.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chameleon.sched import Plan
from router.engine.live import Live
from router.engine.shard_client import ShardError
from router.engine.types import EngineError

if TYPE_CHECKING:
    from router.engine.loop import ServingLoop

log = logging.getLogger("router.engine")


async def load_for_admissions(loop: ServingLoop, plan: Plan, now: float) -> list[Live]:
    """Offload what was dropped, load the admitted requests' adapters; returns the requests that
    can be prefilled (those whose adapter the shard refused are failed and released here)."""
    evicted = [a for adm in plan.admissions.values() for a in adm.evicted]
    await loop.residency.offload([*loop.memory.take_offloads(), *evicted])
    ok: list[Live] = []
    bad: dict[str, ShardError] = {}
    for req in plan.admit:
        lv, aid = loop.lives[req.id], req.adapter_id
        if aid is not None and aid not in bad:
            entry = loop.memory.cache.get(aid)
            if entry is None:
                raise RuntimeError(f"admitted request {req.id} but adapter {aid!r} is not resident")
            try:
                await loop.residency.ensure(aid, entry.pages, entry.spec.nbytes)
            except ShardError as exc:
                if not exc.is_request_error:
                    raise
                bad[aid] = exc
        if aid is not None and aid in bad:
            loop.scheduler.cancel(lv.rid, now)
            loop.memory.release(lv.rid, now)
            loop.drop(lv, _refused(aid, bad[aid]))
        else:
            ok.append(lv)
    for aid, exc in bad.items():
        _forget_refused(loop, aid, exc, now)
    return ok


def _refused(adapter_id: str, exc: ShardError) -> EngineError:
    return EngineError("validation", f"adapter {adapter_id!r} cannot be loaded: {exc.detail}")


def _forget_refused(loop: ServingLoop, adapter_id: str, exc: ShardError, now: float) -> None:
    """Nothing about an adapter the shards refused stays cached: its idle cache entry and pages go,
    the requests still queued for it fail with the same error (their sizes came from the files that
    changed), and the engine forgets its size facts, so the next request re-reads the folder."""
    for lv in [lv for lv in loop.lives.values() if lv.batch_id is None and lv.req.adapter_id == adapter_id]:
        loop.scheduler.cancel(lv.rid, now)
        loop.drop(lv, _refused(adapter_id, exc))
    entry = loop.memory.cache.get(adapter_id)
    if entry is not None and entry.refcount == 0:
        loop.memory.evict(adapter_id, now)
    if loop.forget_adapter is not None and not any(
            lv.req.adapter_id == adapter_id for lv in loop.lives.values()):
        loop.forget_adapter(adapter_id)


async def prefetch(loop: ServingLoop, now: float) -> None:
    """Flush offloads, then load queued requests' adapters into free pages (never evicting), keeping
    the head request's KV need free."""
    await loop.residency.offload(loop.memory.take_offloads())
    waiting = loop.scheduler.waiting(loop.prefetch_depth)
    if not waiting:
        return
    reserve = loop.memory.kv_pages_for(waiting[0])
    for aid, pages in loop.memory.prefetch([r.adapter_id for r in waiting], now, reserve_pages=reserve):
        try:
            await loop.residency.ensure(aid, pages, loop.memory.adapters(aid).nbytes)
        except ShardError as exc:
            if not exc.is_request_error:
                raise
            log.warning("prefetch of adapter %r refused by the shard: %s", aid, exc.detail)
            entry = loop.memory.cache.get(aid)
            if entry is not None and entry.refcount == 0:
                loop.memory.evict(aid, now)
