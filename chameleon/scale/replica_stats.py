"""A replica's routing statistics, read from its router's /metrics (what Ray's routing-stats hook reports).

The figures `chameleon.core.affinity.ReplicaView` needs, from the series the router exports (README,
"Router" metrics; router/metrics_ie.py):
  resident       chameleon_adapter_resident_pages{adapter}
  pending        vllm:lora_requests_info{waiting_lora_adapters} (queued requests' adapters) not resident
  free_pages     chameleon_pool_pages_total - sum(chameleon_pool_pages{tenant})
  queue_lengths  chameleon_scheduler_queue_length{queue} by queue index; waiting requests not in a queue
                 yet (tgi_queue_size - their sum) count in the last one
  running        tgi_batch_current_size
plus `healthy` (the router's /health answered 200) and `ts` (when measured; a router takes a new
report by its `ts`).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chameleon.core.affinity import ReplicaView


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if math.isfinite(s.value):
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    values = samples.get(name)
    return values[0][1] if values else 0.0


def view_from_metrics(replica_id: str, text: str) -> ReplicaView:
    """The replica's view from its /metrics text (ValueError when the text is not Prometheus)."""
    s = _samples(text)
    resident = frozenset(lab["adapter"] for lab, _ in s.get("chameleon_adapter_resident_pages", ())
                         if "adapter" in lab)
    waiting: set[str] = set()
    for lab, _ in s.get("vllm:lora_requests_info", ()):
        waiting |= {a for a in lab.get("waiting_lora_adapters", "").split(",") if a}
    used = sum(v for _, v in s.get("chameleon_pool_pages", ()))
    free = max(0, int(_one(s, "chameleon_pool_pages_total") - used))
    by_queue = sorted((int(lab["queue"]), int(v)) for lab, v in s.get("chameleon_scheduler_queue_length", ())
                      if lab.get("queue", "").isdigit())
    total = int(_one(s, "tgi_queue_size"))
    lengths = [v for _, v in by_queue] or [0]
    lengths[-1] += max(0, total - sum(lengths))  # arrivals not yet classified wait behind every queue
    queues = tuple(lengths)
    return ReplicaView(replica_id, resident, frozenset(waiting) - resident, free, queues,
                       int(_one(s, "tgi_batch_current_size")))


def routing_stats(view: ReplicaView, healthy: bool, ts: float) -> dict[str, Any]:
    """The dict a replica's `record_routing_stats` returns."""
    return {**view.to_stats(), "healthy": healthy, "ts": ts}


def unhealthy_stats(ts: float) -> dict[str, Any]:
    return {"healthy": False, "ts": ts}
