"""`Engine.stats()`: one plain dict for router/metrics.py to export (no prometheus here).

The serving loop reports its part (`ServingLoop.stats()`); the engine adds what it knows about the
shards (`engine_stats`). Keys:
  requests   in_flight, queued, running, queued_prompt_tokens (prompt tokens of the queued);
             running_adapters / waiting_adapters (sorted adapter ids of the requests in a batch / not
             yet in one; the Inference Extension's LoRA series)
  scheduler  the scheduler's own stats() (name, waiting, running, admitted, squashes; the chameleon
             scheduler adds queue count, boundaries, quotas and lengths per queue)
  cache      the MemoryManager's stats() (hits, misses, hit_rate, evictions, prefetches, refused,
             resident_adapters, kv_pages, adapter_pages, free_pages, withheld_pages, ...)
  pool       num_pages, page_bytes, by_tenant {kv, adapter}, free
  adapters   resident {adapter_id: pages on every rank}, loads, offloads, bytes_loaded, load_seconds
  headroom   {rank: {free_device_bytes, total_device_bytes, pool_pages_total, pool_pages_used,
             kv_pages_used, adapter_pages_used, page_bytes, resident_adapters, resident_bytes,
             pool_pages_allocated, pool_allocated_bytes, segment_pages}}; {} from shards that
             speak only generate.v3 (cache adds the elastic pool: budget_pages, limit_pages,
             allocated_pages, resize_events, pages_given_back, headroom_target_bytes, ...)
  loop       steps, schedule_seconds_last, schedule_seconds_max, est_step_seconds, healthy,
             replay_divergences (squashed re-runs that produced other tokens than already streamed),
             shard_faults (failures that put the loop into recovery),
             shard_protocol ("chameleon.v1", or "generate.v3": the shards load adapters themselves and
             `adapters.loads` counts the first-use probes, see router/engine/residency_v3.py)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chameleon_pb import chameleon_pb2

from router.engine.types import EngineInfo

HEADROOM_FIELDS = ("free_device_bytes", "total_device_bytes", "pool_pages_total", "pool_pages_used",
                   "kv_pages_used", "adapter_pages_used", "page_bytes", "resident_adapters",
                   "resident_bytes", "pool_pages_allocated", "pool_allocated_bytes", "segment_pages")


def headroom_stats(headroom: Mapping[int, chameleon_pb2.Headroom]) -> dict[int, dict[str, int]]:
    """The shards' last headroom reports, by rank."""
    return {r: {k: getattr(h, k) for k in HEADROOM_FIELDS} for r, h in sorted(headroom.items())}


def engine_stats(loop_stats: dict[str, Any], info: EngineInfo) -> dict[str, Any]:
    """The loop's stats with the engine's facts about the shards added."""
    pool = loop_stats["pool"]
    loop_stats["pool"] = {"num_pages": info.num_pages, "page_bytes": info.page_bytes,
                          "by_tenant": pool["by_tenant"], "free": pool["free"]}
    loop_stats["loop"]["shard_protocol"] = info.shard_protocol
    return loop_stats
