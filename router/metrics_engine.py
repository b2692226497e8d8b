"""Engine state as Prometheus metrics, read from `Engine.stats()` (router/engine/stats.py) at scrape time.

Names (README "Router" lists them): TGI's batch gauges, then `chameleon_*` for the cache, adapters,
page pool, scheduler queues and shard headroom. A statistic the engine does not report (e.g. queue
boundaries under FIFO) is simply absent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# (section, key, metric name, kind, help); kind "gauge" or "counter" (exported with `_total`)
SCALARS: tuple[tuple[str, str, str, str, str], ...] = (
    ("requests", "queued", "tgi_queue_size", "gauge", "Requests waiting in the scheduler's queues"),
    ("requests", "queued_prompt_tokens", "chameleon_queue_prompt_tokens", "gauge",
     "Prompt tokens of the requests waiting (the prefill work queued; what replica routing weighs)"),
    ("requests", "running", "tgi_batch_current_size", "gauge", "Requests in the running batch"),
    ("requests", "in_flight", "chameleon_requests_in_flight", "gauge", "Requests queued or running"),
    ("cache", "hits", "chameleon_cache_hits", "counter", "Admissions whose adapter was resident"),
    ("cache", "misses", "chameleon_cache_misses", "counter", "Admissions that had to load their adapter"),
    ("cache", "hit_rate", "chameleon_cache_hit_rate", "gauge", "hits / (hits + misses)"),
    ("cache", "evictions", "chameleon_cache_evictions", "counter", "Idle adapters evicted from the cache"),
    ("cache", "prefetches", "chameleon_cache_prefetches", "counter", "Adapters loaded ahead of admission"),
    ("cache", "resident_adapters", "chameleon_resident_adapters", "gauge", "Adapters resident in the pool"),
    ("cache", "idle_adapter_pages", "chameleon_cache_idle_pages", "gauge", "Pages of resident idle adapters"),
    ("cache", "withheld_pages", "chameleon_cache_withheld_pages", "gauge", "Pages withheld for headroom"),
    ("adapters", "bytes_loaded", "chameleon_adapter_bytes_loaded", "counter", "Adapter bytes loaded"),
    ("adapters", "loads", "chameleon_adapter_loads", "counter", "Adapter loads on the shards"),
    ("adapters", "offloads", "chameleon_adapter_offloads", "counter", "Adapter offloads on the shards"),
    ("adapters", "load_seconds", "chameleon_adapter_load_seconds", "counter", "Time spent loading adapters"),
    ("pool", "num_pages", "chameleon_pool_pages_total", "gauge", "Pages in the pool of each shard"),
    ("pool", "page_bytes", "chameleon_pool_page_bytes", "gauge", "Bytes per page on each shard"),
    ("scheduler", "queues", "chameleon_scheduler_queues", "gauge", "Number of scheduler queues"),
    ("scheduler", "squashes", "chameleon_scheduler_squashes", "counter", "Requests squashed after a bypass"),
    ("scheduler", "admitted", "chameleon_scheduler_admitted", "counter", "Requests admitted"),
    ("scheduler", "bypasses", "chameleon_scheduler_bypasses", "counter", "Opportunistic bypasses"),
    ("scheduler", "refreshes", "chameleon_scheduler_refreshes", "counter", "Queue layout refreshes"),
    ("scheduler", "quota_stops", "chameleon_scheduler_quota_stops", "counter",
     "Times the MLQ stopped a queue on its memory quota"),
    ("scheduler", "starved", "chameleon_scheduler_starved", "counter",
     "Requests the MLQ admitted first under its starvation bound"),
    ("scheduler", "backfills", "chameleon_scheduler_backfills", "counter",
     "Requests the MLQ backfilled behind a starved head that did not fit"),
    ("scheduler", "prefill_bound_share", "chameleon_scheduler_prefill_bound_share", "gauge",
     "Recent share of MLQ steps stopped by the per-step prefill budget"),
    ("scheduler", "compute_fcfs", "chameleon_scheduler_compute_fcfs", "gauge",
     "1 while the MLQ admits in arrival order because compute binds"),
    ("loop", "steps", "chameleon_engine_steps", "counter", "Serving-loop steps"),
    ("loop", "est_step_seconds", "chameleon_engine_est_step_seconds", "gauge", "Estimated decode step time"),
    ("loop", "schedule_seconds_last", "chameleon_engine_schedule_seconds", "gauge", "Last scheduling time"),
    ("loop", "healthy", "chameleon_engine_healthy", "gauge", "1 when the shards answered the last check"),
    ("loop", "shard_faults", "chameleon_shard_faults", "counter",
     "Shard faults that failed the running requests and started a recovery (never a refused request)"),
    # the headroom loop and the elastic pool (chameleon/core/headroom.py, elastic.py)
    ("cache", "budget_pages", "chameleon_cache_budget_pages", "gauge",
     "Pool pages the headroom rule lets the shards keep allocated (the adapter cache grows up to it)"),
    ("pool", "budget_bytes", "chameleon_cache_budget_bytes", "gauge", "The page budget in bytes (one rank)"),
    ("cache", "limit_pages", "chameleon_pool_limit_pages", "gauge", "Pages below this id are in service"),
    ("cache", "allocated_pages", "chameleon_pool_allocated_pages", "gauge",
     "Pool pages backed by memory on the shards (the rest were released)"),
    ("pool", "allocated_bytes", "chameleon_pool_allocated_bytes", "gauge", "Pool bytes allocated, one rank"),
    ("cache", "resize_events", "chameleon_pool_resizes", "counter", "ResizePool calls that changed the pool"),
    ("cache", "shrink_events", "chameleon_pool_shrinks", "counter", "Pool resizes that released memory"),
    ("cache", "grow_events", "chameleon_pool_grows", "counter", "Pool resizes that allocated memory again"),
    ("cache", "pages_given_back", "chameleon_pool_pages_given_back", "counter",
     "Pool pages released to the OS or device under memory pressure"),
    ("cache", "pages_regrown", "chameleon_pool_pages_regrown", "counter", "Pool pages allocated again"),
    ("cache", "headroom_evictions", "chameleon_cache_headroom_evictions", "counter",
     "Idle adapters evicted to give memory back"),
    ("cache", "relocations", "chameleon_cache_relocations", "counter",
     "Idle adapters moved below a shrinking pool's limit"),
    ("cache", "headroom_target_bytes", "chameleon_memory_headroom_target_bytes", "gauge",
     "--memory-headroom in bytes (0 when given as a fraction)"),
    ("cache", "headroom_target_fraction", "chameleon_memory_headroom_target_fraction", "gauge",
     "--memory-headroom as a fraction of each rank's total memory (0 when given in bytes)"),
    ("loop", "resize_failures", "chameleon_pool_resize_refusals", "counter",
     "ResizePool calls the shards refused (a page still held; retried)"),
)

# (section, key, metric name, label, help): a list (label = index) or a dict (label = its keys)
FAMILIES: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "scheduler",
        "boundaries",
        "chameleon_scheduler_queue_boundary",
        "queue",
        "WRS upper boundary per queue",
    ),
    ("scheduler", "quotas", "chameleon_scheduler_queue_quota", "queue", "Token quota per queue"),
    ("scheduler", "used", "chameleon_scheduler_queue_quota_used", "queue", "Quota in use per queue"),
    ("scheduler", "lengths", "chameleon_scheduler_queue_length", "queue", "Requests waiting per queue"),
    ("pool", "by_tenant", "chameleon_pool_pages", "tenant", "Pool pages in use by tenant (kv, adapter)"),
    ("adapters", "resident", "chameleon_adapter_resident_pages", "adapter", "Pages of each resident adapter"),
)

HEADROOM_KEYS = (
    "free_device_bytes",
    "total_device_bytes",
    "pool_pages_total",
    "pool_pages_used",
    "kv_pages_used",
    "adapter_pages_used",
    "page_bytes",
    "resident_adapters",
    "resident_bytes",
    "pool_pages_allocated",
    "pool_allocated_bytes",
    "segment_pages",
)


def _num(value: Any) -> float | None:
    if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _items(value: Any) -> list[tuple[str, float]]:
    pairs = (
        enumerate(value)
        if isinstance(value, (list, tuple))
        else (value.items() if isinstance(value, Mapping) else ())
    )
    return [(str(k), n) for k, v in pairs if (n := _num(v)) is not None]


class EngineStatsCollector:
    """A prometheus_client collector over `stats()`; `block_size()` turns KV pages into tokens."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], block_size: Callable[[], int]) -> None:
        self._stats = stats
        self._block_size = block_size

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if not stats:
            return
        for section, key, name, kind, doc in SCALARS:
            value = _num(stats.get(section, {}).get(key))
            if value is not None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield cls(name, doc, value=value)
        kv_pages = _num(stats.get("cache", {}).get("kv_pages"))
        if kv_pages is not None:
            yield GaugeMetricFamily(
                "tgi_batch_current_max_tokens",
                "KV tokens reserved by the running batch",
                value=kv_pages * self._block_size(),
            )
        for section, key, name, label, doc in FAMILIES:
            items = _items(stats.get(section, {}).get(key))
            if items:
                fam = GaugeMetricFamily(name, doc, labels=[label])
                for k, v in items:
                    fam.add_metric([k], v)
                yield fam
        yield from _headroom(stats.get("headroom", {}))


def _headroom(headroom: Mapping[Any, Any]) -> Iterator[Metric]:
    if not headroom:
        return
    for key in HEADROOM_KEYS:
        fam = GaugeMetricFamily(
            f"chameleon_shard_{key}", f"Shard headroom: {key.replace('_', ' ')}", labels=["rank"]
        )
        for rank, room in headroom.items():
            value = _num(room.get(key)) if isinstance(room, Mapping) else None
            if value is not None:
                fam.add_metric([str(rank)], value)
        yield fam
