"""/metrics: TGI's request metrics (names without `_total`, as TGI writes them) and the engine's state."""

from __future__ import annotations

import re

import requests

from tests.router_api.fakes import ServedRouter

STATS = {
    "requests": {"in_flight": 3, "queued": 2, "running": 1},
    "scheduler": {
        "queues": 2,
        "boundaries": [0.4],
        "quotas": [100, 50],
        "used": [10, 0],
        "lengths": [1, 1],
        "squashes": 4,
        "admitted": 9,
    },
    "cache": {"hits": 5, "misses": 2, "hit_rate": 5 / 7, "resident_adapters": 2, "kv_pages": 3},
    "pool": {"num_pages": 100, "page_bytes": 4096, "by_tenant": {"kv": 3, "adapter": 6}},
    "adapters": {"resident": {"alpha": 2, "beta": 4}, "bytes_loaded": 12345, "loads": 2},
    "headroom": {0: {"free_device_bytes": 1000, "pool_pages_used": 9}, 1: {"free_device_bytes": 900}},
}


def _metrics(router: ServedRouter) -> str:
    resp = requests.get(router.http + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return resp.text


def _value(text: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{sample} not in /metrics"
    return float(m.group(1))


def test_request_metrics_count_successes_and_failures(router: ServedRouter):
    before = _metrics(router)
    ok = requests.post(
        router.http + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=10
    )
    bad = requests.post(router.http + "/generate", json={"inputs": "", "parameters": {}}, timeout=10)
    assert (ok.status_code, bad.status_code) == (200, 422)
    after = _metrics(router)
    assert "# TYPE tgi_request_count counter" in after
    assert _value(after, "tgi_request_count") - _value(before, "tgi_request_count") == 2
    assert _value(after, "tgi_request_success") - _value(before, "tgi_request_success") == 1
    fail = 'tgi_request_failure{err="validation"}'
    assert _value(after, fail) - (_value(before, fail) if fail in before else 0) == 1
    for name in (
        "tgi_request_duration",
        "tgi_request_validation_duration",
        "tgi_request_queue_duration",
        "tgi_request_inference_duration",
        "tgi_request_mean_time_per_token_duration",
        "tgi_request_generated_tokens",
        "tgi_request_input_length",
    ):
        assert f"{name}_count" in after
    gen = _value(after, "tgi_request_generated_tokens_sum") - _value(
        before, "tgi_request_generated_tokens_sum"
    )
    assert gen == 2


def test_engine_state_is_exported(router: ServedRouter):
    router.engine.stats_value = STATS
    try:
        text = _metrics(router)
    finally:
        router.engine.stats_value = {}
    expected = {
        "tgi_queue_size": 2,
        "tgi_batch_current_size": 1,
        "tgi_batch_current_max_tokens": 3 * 16,
        "chameleon_cache_hits_total": 5,
        "chameleon_cache_misses_total": 2,
        "chameleon_resident_adapters": 2,
        "chameleon_adapter_bytes_loaded_total": 12345,
        "chameleon_scheduler_queues": 2,
        "chameleon_scheduler_squashes_total": 4,
        'chameleon_scheduler_queue_boundary{queue="0"}': 0.4,
        'chameleon_scheduler_queue_quota{queue="1"}': 50,
        'chameleon_scheduler_queue_length{queue="0"}': 1,
        'chameleon_pool_pages{tenant="adapter"}': 6,
        'chameleon_adapter_resident_pages{adapter="beta"}': 4,
        'chameleon_shard_free_device_bytes{rank="1"}': 900,
        'chameleon_shard_pool_pages_used{rank="0"}': 9,
    }
    for sample, value in expected.items():
        assert _value(text, sample) == value, sample


def test_batch_step_durations_from_the_engine_hook(router: ServedRouter):
    before = _metrics(router)
    prefill, decode = (
        'tgi_batch_inference_duration_count{method="prefill"}',
        ('tgi_batch_forward_duration_count{method="decode"}'),
    )
    n_prefill = _value(before, prefill) if prefill in before else 0
    n_decode = _value(before, decode) if decode in before else 0
    requests.post(
        router.http + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 3}}, timeout=10
    )
    after = _metrics(router)
    assert _value(after, prefill) - n_prefill == 1
    assert _value(after, decode) - n_decode == 2
