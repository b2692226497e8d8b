"""Read counters off the router's Prometheus endpoint (GET /metrics), for cache hit rates and adapter
load figures over a run: take a snapshot before and after, subtract."""

from __future__ import annotations

import urllib.error
import urllib.request

COUNTERS = ("chameleon_cache_hits_total", "chameleon_cache_misses_total", "chameleon_adapter_loads_total",
            "chameleon_adapter_bytes_loaded_total", "chameleon_adapter_load_seconds_total",
            "chameleon_scheduler_squashes_total", "chameleon_scheduler_refreshes_total",
            "chameleon_cache_evictions_total", "chameleon_cache_prefetches_total",
            "chameleon_scheduler_bypasses_total", "chameleon_scheduler_quota_stops_total",
            "chameleon_scheduler_starved_total", "chameleon_scheduler_backfills_total")


def parse_metrics(text: str, names: tuple[str, ...] = COUNTERS) -> dict[str, float]:
    """Unlabelled samples of the given metric names from the Prometheus text format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        if name in names:
            try:
                out[name] = float(value.split()[0])
            except (ValueError, IndexError):
                continue
    return out


def snapshot(url: str | None, timeout_s: float = 10.0,
             names: tuple[str, ...] = COUNTERS) -> dict[str, float] | None:
    """Counters now, or None when there is no URL or the endpoint cannot be read."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return parse_metrics(resp.read().decode("utf-8", "replace"), names)
    except (OSError, urllib.error.URLError, ValueError):
        return None


def delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float | None]:
    """Counter increases over a run, and the cache hit rate over it (None when unknown)."""
    if before is None or after is None:
        return {"cache_hit_rate": None}
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
    looked = d["chameleon_cache_hits_total"] + d["chameleon_cache_misses_total"]
    return {"cache_hit_rate": d["chameleon_cache_hits_total"] / looked if looked > 0 else None,
            "adapter_loads": d["chameleon_adapter_loads_total"],
            "adapter_bytes_loaded": d["chameleon_adapter_bytes_loaded_total"],
            "adapter_load_s": d["chameleon_adapter_load_seconds_total"],
            "squashes": d["chameleon_scheduler_squashes_total"],
            "evictions": d["chameleon_cache_evictions_total"],
            "prefetches": d["chameleon_cache_prefetches_total"],
            "bypasses": d["chameleon_scheduler_bypasses_total"],
            "quota_stops": d["chameleon_scheduler_quota_stops_total"],
            "starved": d["chameleon_scheduler_starved_total"],
            "backfills": d["chameleon_scheduler_backfills_total"],
            # MLQ queue-layout refreshes during the run and since the start: 0 since the start means
            # the Chameleon scheduler still had its one cold-start queue (FIFO order)
            "scheduler_refreshes": d["chameleon_scheduler_refreshes_total"],
            "scheduler_refreshes_total": after.get("chameleon_scheduler_refreshes_total")}
