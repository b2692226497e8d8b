"""The Inference Extension's model-server series on /metrics (router/metrics_ie.py), parsed with
prometheus_client's own parser from the router's full exposition."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from router.metrics import RouterMetrics
from router.metrics_ie import adapter_slots

STATS: dict[str, Any] = {
    "requests": {"in_flight": 5, "queued": 3, "running": 2,
                 "running_adapters": ["alpha", "beta"], "waiting_adapters": ["beta", "gamma", "delta"]},
    "cache": {"kv_pages": 25, "adapter_pages": 12, "resident_adapters": 3, "free_pages": 63,
              "withheld_pages": 5},
    "pool": {"num_pages": 100, "page_bytes": 4096, "by_tenant": {"kv": 25, "adapter": 12}, "free": 63},
}


def families(stats: dict[str, Any], model_name: str = "tiny") -> dict[str, Any]:
    text = RouterMetrics(lambda: stats, block_size=lambda: 16, model_name=model_name).render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def one_sample(fams: dict[str, Any], name: str) -> Any:
    assert name in fams, f"{name} missing from /metrics"
    samples = fams[name].samples
    assert len(samples) == 1
    return samples[0]


def test_queue_running_and_kv_gauges():
    fams = families(STATS)
    for name, value in (("vllm:num_requests_waiting", 3), ("vllm:num_requests_running", 2),
                        ("vllm:kv_cache_usage_perc", 0.25), ("vllm:gpu_cache_usage_perc", 0.25)):
        assert fams[name].type == "gauge"
        sample = one_sample(fams, name)
        assert sample.value == value
        assert sample.labels == {"model_name": "tiny"}


def test_lora_info_lists_running_and_waiting_adapters_apart():
    sample = one_sample(families(STATS), "vllm:lora_requests_info")
    labels = sample.labels
    assert set(labels) == {"model_name", "running_lora_adapters", "waiting_lora_adapters", "max_lora"}
    assert labels["running_lora_adapters"].split(",") == ["alpha", "beta"]
    assert labels["waiting_lora_adapters"].split(",") == ["beta", "delta", "gamma"]
    # slots: (100 pool - 25 KV - 5 withheld) pages at 12 / 3 = 4 pages per adapter
    assert labels["max_lora"] == "17"
    assert sample.value > 1e9  # a unix timestamp: the EPP keeps the newest sample


def test_lora_info_when_idle_has_empty_lists():
    idle = {**STATS, "requests": {"queued": 0, "running": 0, "running_adapters": [], "waiting_adapters": []}}
    labels = one_sample(families(idle), "vllm:lora_requests_info").labels
    assert labels["running_lora_adapters"] == "" and labels["waiting_lora_adapters"] == ""


def test_adapter_slots_before_any_adapter_is_the_free_pages_and_never_below_running():
    empty = {"requests": {"running_adapters": []}, "cache": {"resident_adapters": 0, "free_pages": 40},
             "pool": {"num_pages": 40}}
    assert adapter_slots(empty) == 40
    crowded = {"requests": {"running_adapters": ["a", "b", "c"]},
               "cache": {"resident_adapters": 3, "adapter_pages": 300, "kv_pages": 90},
               "pool": {"num_pages": 100}}
    assert adapter_slots(crowded) == 3


def test_cache_config_info_and_no_series_before_the_engine_started():
    cfg = one_sample(families(STATS), "vllm:cache_config_info")
    assert cfg.labels == {"block_size": "16", "num_gpu_blocks": "100"} and cfg.value == 1
    assert "vllm:num_requests_waiting" not in families({})
