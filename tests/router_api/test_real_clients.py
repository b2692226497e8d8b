"""End to end on real processes (tiny model) with the real clients: `text-generation`,
`huggingface_hub.InferenceClient`, `openai`; adapter management on both APIs; /metrics names."""

from __future__ import annotations

import re

import grpc
import pytest
import requests
from chameleon_pb import chameleon_pb2 as cpb
from chameleon_pb import chameleon_pb2_grpc as cpb_grpc

from tests.router_api.real import RealSystem, http_generate, metric

pytestmark = pytest.mark.slow


def test_adapter_management_on_both_apis(system: RealSystem):
    router = system.router

    def resident(name: str) -> bool:
        data = requests.get(router.http + "/v1/models", timeout=10).json()["data"]
        return next(m for m in data if m["id"] == name)["resident"]

    resp = requests.post(router.http + "/v1/load_lora_adapter", json={"lora_name": "a17"}, timeout=30)
    assert resp.status_code == 200 and "a17" in resp.text
    assert resident("a17")
    admin = cpb_grpc.AdapterAdminStub(grpc.insecure_channel(router.grpc))
    listed = {a.adapter_id: a for a in admin.ListAdapters(cpb.ListAdaptersRequest()).adapters}
    assert listed["a17"].resident and listed["a17"].pages > 0
    assert admin.UnloadAdapter(cpb.OffloadAdapterRequest(adapter_id="a17")).was_resident
    assert not resident("a17")
    loaded = admin.LoadAdapter(cpb.LoadAdapterRequest(adapter_id="a18"))
    assert loaded.adapter.resident and loaded.load_ns > 0
    resp = requests.post(router.http + "/v1/unload_lora_adapter", json={"lora_name": "a18"}, timeout=30)
    assert resp.status_code == 200 and not resident("a18")


def test_metrics_names(system: RealSystem):
    router = system.router
    http_generate(router, "count me", "a02", 3)
    assert requests.post(router.http + "/generate", json={"inputs": ""}, timeout=30).status_code == 422
    text = requests.get(router.http + "/metrics", timeout=10).text
    for name in (
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_request_duration_count",
        "tgi_request_validation_duration_count",
        "tgi_request_queue_duration_count",
        "tgi_request_inference_duration_count",
        "tgi_request_mean_time_per_token_duration_count",
        "tgi_request_generated_tokens_count",
        "tgi_request_input_length_count",
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_batch_current_max_tokens",
        "chameleon_cache_hits_total",
        "chameleon_cache_misses_total",
        "chameleon_adapter_bytes_loaded_total",
        "chameleon_resident_adapters",
        "chameleon_adapter_resident_pages",
        "chameleon_pool_pages",
        "chameleon_scheduler_queues",
        "chameleon_scheduler_queue_quota",
        "chameleon_scheduler_queue_length",
        "chameleon_scheduler_squashes_total",
        "chameleon_shard_free_device_bytes",
    ):
        assert re.search(rf"^{name}[ {{]", text, re.M), name
    assert metric(router, "tgi_request_success") >= 1


def test_text_generation_client(system: RealSystem):
    from text_generation import Client
    from text_generation.errors import ValidationError as TgValidationError

    router = system.router
    client = Client(router.http, timeout=60)
    want = http_generate(router, "hello world", None, 6)
    out = client.generate("hello world", max_new_tokens=6)
    assert out.generated_text == want["generated_text"]
    assert [t.id for t in out.details.tokens] == [t["id"] for t in want["details"]["tokens"]]
    streamed = list(client.generate_stream("hello world", max_new_tokens=6))
    assert [s.token.id for s in streamed] == [t["id"] for t in want["details"]["tokens"]]
    assert streamed[-1].generated_text == want["generated_text"]
    assert streamed[-1].details.generated_tokens == len(streamed)
    with pytest.raises(TgValidationError, match="up to 4 stop sequences"):
        client.generate("hello", max_new_tokens=2, stop_sequences=list("abcde"))


def test_huggingface_hub_inference_client(system: RealSystem):
    from huggingface_hub import InferenceClient

    router = system.router
    client = InferenceClient(base_url=router.http, timeout=60)
    want = http_generate(router, "hello adapters", "a03", 6)
    out = client.text_generation("hello adapters", max_new_tokens=6, adapter_id="a03", details=True)
    assert out.generated_text == want["generated_text"]
    assert [t.id for t in out.details.tokens] == [t["id"] for t in want["details"]["tokens"]]
    pieces = list(client.text_generation("hello adapters", max_new_tokens=6, adapter_id="a03", stream=True))
    assert "".join(pieces) == "".join(t["text"] for t in want["details"]["tokens"])
    chat = client.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    chunks = list(
        client.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0, stream=True)
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == chat.choices[0].message.content
    )
    # health_check and get_endpoint_info take the endpoint as `model` (huggingface_hub refuses them with
    # base_url alone); the router answers them as TGI does
    endpoint = InferenceClient(model=router.http, provider="hf-inference", timeout=60)
    assert endpoint.health_check()
    assert endpoint.get_endpoint_info()["max_stop_sequences"] == 4


def test_openai_client(system: RealSystem):
    from openai import OpenAI, UnprocessableEntityError

    router = system.router
    client = OpenAI(base_url=router.http + "/v1", api_key="not-needed", timeout=60)
    want = http_generate(router, "open models", "a04", 5)
    out = client.completions.create(model="a04", prompt="open models", max_tokens=5, temperature=0)
    assert out.choices[0].text == want["generated_text"]
    assert out.usage.completion_tokens == want["details"]["generated_tokens"]
    streamed = client.completions.create(
        model="a04", prompt="open models", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == want["generated_text"]
    messages = [{"role": "user", "content": "Say hi"}]
    chat = client.chat.completions.create(model="a05", messages=messages, max_tokens=5, temperature=0)
    assert chat.choices[0].finish_reason in ("length", "stop")
    stream = client.chat.completions.create(
        model="a05", messages=messages, max_tokens=5, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        == chat.choices[0].message.content
    )
    assert {"a05", "a19"} <= {m.id for m in client.models.list()}
    with pytest.raises(UnprocessableEntityError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "unknown adapter 'nope'" in str(info.value.body)  # TGI's error shape: {"error": str, "error_type"}
