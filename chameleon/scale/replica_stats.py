"""A replica's routing statistics, read from its router's /metrics (what Ray's routing-stats hook reports).

The figures `chameleon.core.affinity.ReplicaView` needs, from the series the router exports (README,
"Router" metrics; router/metrics_ie.py):
  resident       chameleon_adapter_resident_pages{adapter}
  pending        vllm:lora_requests_info{waiting_lora_adapters} (queued requests' adapters) not resident
  free_pages     chameleon_pool_pages_total - sum(chameleon_pool_pages{tenant})
  queue_lengths  chameleon_scheduler_queue_length{queue} by queue index; waiting requests not in a queue
                 yet (tgi_queue_size - their sum) count in the last one
  running        tgi_batch_current_size
  queued_tokens  chameleon_queue_prompt_tokens (None when the router does not export it)
and the costs (`CostMeter`, recent: increments of the counters between reports, decayed):
  prefill_s_per_token  tgi_batch_inference_duration_sum{method="prefill"} / tgi_request_input_length_sum
  tokens_per_request   tgi_request_input_length_sum / _count
  load_s               chameleon_adapter_load_seconds_total / chameleon_adapter_loads_total
  step_s               chameleon_engine_est_step_seconds (a gauge: the router's own estimate)
plus `healthy` (the router's /health answered 200) and `ts` (when measured; a router takes a new
report by its `ts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chameleon.core.affinity import ReplicaView

Samples = dict[str, list[tuple[dict[str, str], float]]]
# the cumulative series CostMeter follows: (name, method label or "")
CUMULATIVE = (("tgi_batch_inference_duration_sum", "prefill"), ("tgi_request_input_length_sum", ""),
              ("tgi_request_input_length_count", ""), ("chameleon_adapter_load_seconds_total", ""),
              ("chameleon_adapter_loads_total", ""))

QUEUED_TOKENS = "chameleon_queue_prompt_tokens"


@dataclass
class CostMeter:
    """A replica's recent costs from its cumulative counters. Each report adds the counters' increments
    since the previous one to sums that decay with `half_life_s`, so the figures follow a replica that
    slows down (a busy machine) without forgetting a cost seen once (an adapter load is rare when
    the cache works). When a counter went backwards (the router restarted) all count from zero."""

    half_life_s: float = 30.0
    _prev: dict[str, float] | None = field(default=None, repr=False)
    _sums: dict[str, float] = field(default_factory=dict, repr=False)
    _ts: float | None = field(default=None, repr=False)

    def update(self, counters: dict[str, float], ts: float) -> dict[str, float]:
        """Take the counters read at `ts`; returns ReplicaView's cost fields (0.0 = not known yet)."""
        prev = self._prev or {}
        restarted = any(v < prev.get(k, 0.0) for k, v in counters.items())
        inc = {k: v if restarted else v - prev.get(k, 0.0) for k, v in counters.items()}
        decay = 0.5 ** (max(0.0, ts - self._ts) / self.half_life_s) if self._ts is not None else 1.0
        self._sums = {k: self._sums.get(k, 0.0) * decay + inc[k] for k in inc}
        self._prev, self._ts = dict(counters), ts
        return self.costs()

    def costs(self) -> dict[str, float]:
        s = self._sums

        def ratio(a: str, b: str) -> float:
            return s.get(a, 0.0) / s[b] if s.get(b, 0.0) > 0 else 0.0

        return {"prefill_s_per_token": ratio("tgi_batch_inference_duration_sum/prefill",
                                             "tgi_request_input_length_sum"),
                "tokens_per_request": ratio("tgi_request_input_length_sum", "tgi_request_input_length_count"),
                "load_s": ratio("chameleon_adapter_load_seconds_total", "chameleon_adapter_loads_total")}


def cumulative(samples: Samples) -> dict[str, float]:
    """The CUMULATIVE series (`name/method` for a labelled one), 0.0 when absent."""
    out: dict[str, float] = {}
    for name, method in CUMULATIVE:
        values = [v for lab, v in samples.get(name, ()) if lab.get("method", "") == method]
        out[f"{name}/{method}" if method else name] = sum(values)
    return out


def _samples(text: str) -> Samples:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if math.isfinite(s.value):
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _one(samples: Samples, name: str) -> float:
    values = samples.get(name)
    return values[0][1] if values else 0.0


def view_from_metrics(replica_id: str, text: str, meter: CostMeter | None = None,
                      ts: float = 0.0) -> ReplicaView:
    """The replica's view from its /metrics text (ValueError when the text is not Prometheus); with a
    `meter` (one per replica, fed every report) it carries the replica's recent costs too."""
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
    queued_tokens = max(0.0, _one(s, QUEUED_TOKENS)) if QUEUED_TOKENS in s else None
    view = ReplicaView(replica_id, resident, frozenset(waiting) - resident, free, queues,
                       int(_one(s, "tgi_batch_current_size")), queued_tokens=queued_tokens)
    if meter is None:
        return view
    costs = meter.update(cumulative(s), ts)
    return replace(view, **costs, step_s=max(0.0, _one(s, "chameleon_engine_est_step_seconds")))


def routing_stats(view: ReplicaView, healthy: bool, ts: float) -> dict[str, Any]:
    """The dict a replica's `record_routing_stats` returns."""
    return {**view.to_stats(), "healthy": healthy, "ts": ts}


def unhealthy_stats(ts: float) -> dict[str, Any]:
    return {"healthy": False, "ts": ts}
