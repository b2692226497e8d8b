"""The Gateway API Inference Extension's model-server contract on our /metrics.

The extension's endpoint picker (EPP) scrapes each model server and reads the series its vLLM
configuration names; we export those exact names and labels, beside our own `tgi_*` / `chameleon_*`
series, so a group of routers can sit behind an InferencePool (deploy/ has example manifests):

  vllm:num_requests_waiting   gauge  requests queued in the scheduler (not yet in a batch)
  vllm:num_requests_running   gauge  requests in the running batch
  vllm:kv_cache_usage_perc    gauge  KV pages in use / pool pages, a fraction in [0, 1] (vLLM's "perc"
                                     is a fraction too); `vllm:gpu_cache_usage_perc` is the same value
                                     under the older name that earlier EPP releases read
  vllm:lora_requests_info     gauge  value: the time of this scrape (unix seconds; the EPP keeps the
                                     newest sample); labels:
                                       running_lora_adapters  adapters of the requests in a batch
                                       waiting_lora_adapters  adapters of the requests still queued
                                       max_lora               adapter slots (below)
                                     both lists comma-separated, sorted; an adapter with requests in
                                     both states is in both lists, as in vLLM
  vllm:cache_config_info      gauge  1; labels block_size (tokens per KV page), num_gpu_blocks (pool pages)

Every series carries `model_name` (the served name), as vLLM labels its gauges.

`max_lora`: vLLM's is the number of adapter slots in device memory. Ours has no fixed slots: adapters
and KV share one page pool, and idle adapters are cache that KV can reclaim. We report how many
adapters of the mean resident size fit in the pages KV does not hold now (pool - KV - withheld),
never fewer than the adapters running; before any adapter was resident, the free page count (an
upper bound). The EPP compares it with the running adapters to see whether one more adapter fits
without waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"
LORA_INFO = "vllm:lora_requests_info"
CACHE_CONFIG = "vllm:cache_config_info"
LORA_LABELS = ("running_lora_adapters", "waiting_lora_adapters", "max_lora")


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return default


def _ids(value: Any) -> list[str]:
    return sorted(str(v) for v in value) if isinstance(value, (list, tuple, set, frozenset)) else []


def adapter_slots(stats: Mapping[str, Any]) -> int:
    """`max_lora` from an `Engine.stats()` dict (see the module docstring)."""
    cache, pool = stats.get("cache", {}), stats.get("pool", {})
    running = len(_ids(stats.get("requests", {}).get("running_adapters")))
    resident = _int(cache.get("resident_adapters"))
    adapter_pages = _int(cache.get("adapter_pages"))
    if resident > 0 and adapter_pages > 0:
        room = _int(pool.get("num_pages")) - _int(cache.get("kv_pages")) - _int(cache.get("withheld_pages"))
        slots = room * resident // adapter_pages
    else:
        slots = _int(cache.get("free_pages"), _int(pool.get("free")))
    return max(slots, running, 1)


def kv_usage(stats: Mapping[str, Any]) -> float:
    """KV pages in use / pool pages, in [0, 1]."""
    pages = _int(stats.get("pool", {}).get("num_pages"))
    kv = _int(stats.get("cache", {}).get("kv_pages"))
    return min(1.0, kv / pages) if pages > 0 else 0.0


class InferenceExtensionCollector:
    """A prometheus_client collector over `stats()` (an `Engine.stats()` dict); nothing while the
    engine has no stats yet (not started)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], block_size: Callable[[], int],
                 model_name: Callable[[], str], clock: Callable[[], float] = time.time) -> None:
        self._stats, self._block_size, self._model_name, self._clock = stats, block_size, model_name, clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if not stats:
            return
        model = self._model_name()
        requests = stats.get("requests", {})
        yield _gauge(WAITING, "Requests waiting to be scheduled", model, _int(requests.get("queued")))
        yield _gauge(RUNNING, "Requests in the running batch", model, _int(requests.get("running")))
        usage = kv_usage(stats)
        yield _gauge(KV_USAGE, "KV-cache usage; 1 means 100 percent", model, usage)
        yield _gauge(KV_USAGE_OLD, "KV-cache usage (older name of vllm:kv_cache_usage_perc)", model, usage)
        lora = GaugeMetricFamily(LORA_INFO, "Running and waiting LoRA adapters; value = scrape time",
                                 labels=["model_name", *LORA_LABELS])
        lora.add_metric([model, ",".join(_ids(requests.get("running_adapters"))),
                         ",".join(_ids(requests.get("waiting_adapters"))), str(adapter_slots(stats))],
                        self._clock())
        yield lora
        config = GaugeMetricFamily(CACHE_CONFIG, "KV cache layout", labels=["block_size", "num_gpu_blocks"])
        config.add_metric([str(self._block_size()), str(_int(stats.get("pool", {}).get("num_pages")))], 1.0)
        yield config


def _gauge(name: str, doc: str, model: str, value: float) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=["model_name"])
    fam.add_metric([model], float(value))
    return fam
