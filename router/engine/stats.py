"""`Engine.stats()`: one plain dict for router/metrics.py to export (no prometheus here).

Keys:
  requests   in_flight, queued, running
  scheduler  the scheduler's own stats() (name, waiting, running, admitted, squashes; the chameleon
             scheduler adds queue count, boundaries, quotas and lengths per queue)
  cache      the MemoryManager's stats() (hits, misses, hit_rate, evictions, prefetches, refused,
             resident_adapters, kv_pages, adapter_pages, free_pages, withheld_pages, ...)
  pool       num_pages, page_bytes, by_tenant {kv, adapter}, free
  adapters   resident {adapter_id: pages on every rank}, loads, offloads, bytes_loaded, load_seconds
  headroom   {rank: {free_device_bytes, total_device_bytes, pool_pages_total, pool_pages_used,
             kv_pages_used, adapter_pages_used, page_bytes, resident_adapters}}; {} from shards that
             speak only generate.v3
  loop       steps, schedule_seconds_last, schedule_seconds_max, est_step_seconds, healthy,
             replay_divergences (squashed re-runs that produced other tokens than already streamed),
             shard_faults (failures that put the loop into recovery),
             shard_protocol ("chameleon.v1", or "generate.v3": the shards load adapters themselves and
             `adapters.loads` counts the first-use probes, see router/engine/residency_v3.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.engine.entry import Engine

_HEADROOM = ("free_device_bytes", "total_device_bytes", "pool_pages_total", "pool_pages_used",
             "kv_pages_used", "adapter_pages_used", "page_bytes", "resident_adapters")


def engine_stats(engine: Engine) -> dict[str, Any]:
    loop = engine.loop
    if loop is None or engine.info is None:
        return {}
    mem, sched, res = loop.memory, loop.scheduler, loop.residency
    running = sum(1 for lv in loop.lives.values() if lv.batch_id is not None)
    return {
        "requests": {"in_flight": len(loop.lives), "queued": sched.num_waiting(), "running": running},
        "scheduler": sched.stats(),
        "cache": mem.stats(),
        "pool": {"num_pages": engine.info.num_pages, "page_bytes": engine.info.page_bytes,
                 "by_tenant": mem.pool.used_by_tenant(), "free": mem.pool.free_pages()},
        "adapters": {"resident": {e.adapter_id: len(e.pages) for e in mem.cache.entries()},
                     "loads": res.loads, "offloads": res.offloads, "bytes_loaded": res.bytes_loaded,
                     "load_seconds": res.load_s},
        "headroom": {r: {k: getattr(h, k) for k in _HEADROOM} for r, h in sorted(loop.headroom.items())},
        "loop": {"steps": loop.steps, "schedule_seconds_last": loop.schedule_s,
                 "schedule_seconds_max": loop.schedule_max_s, "est_step_seconds": loop.est_step_s,
                 "healthy": loop.health.healthy, "replay_divergences": loop.replay_divergences,
                 "shard_faults": loop.shard_faults, "shard_protocol": engine.info.shard_protocol},
    }
