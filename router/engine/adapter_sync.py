"""Tell the shards what the MemoryManager decided about adapters, in a safe order.

Order matters because page ids are reused: every offload (admission evictions, NoCache drops,
headroom shrinks — `memory.take_offloads()`) is sent before any load, since a load or a KV block
may reuse the pages just freed. An adapter the shard refuses (missing, corrupt, mismatched:
INVALID_ARGUMENT) fails only the requests that wanted it; any other shard error propagates and
fails the step.
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
            loop.drop(lv, EngineError("validation", f"adapter {aid!r} cannot be loaded: {bad[aid].detail}"))
        else:
            ok.append(lv)
    return ok


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
