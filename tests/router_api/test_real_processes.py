"""`chameleon router` and `chameleon shard` as real processes on the tiny demo model, driven by real clients.

One router + shard pair serves the module; a second shard is driven directly (generate.v3, no router) as
the reference for "the same tokens as the shard alone".
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from chameleon_pb import chameleon_pb2 as cpb
from chameleon_pb import chameleon_pb2_grpc as cpb_grpc
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from google.protobuf import json_format
from tokenizers import Tokenizer

from chameleon.memory import ModelShape
from router.engine.adapters import AdapterRegistry
from router.engine.config import EngineConfig
from router.engine.direct import direct_generate
from router.engine.shard_client import ShardClient
from router.engine.startup import start_shards
from router.engine.types import GenerateParams, GenerateRequest
from tests.router_api.fakes import free_port
from tests.router_api.procs import PREFILL, RouterProc, ShardProc, make_adapter_dir, workdir

pytestmark = pytest.mark.slow
MAX_CONCURRENT = 64


@pytest.fixture(scope="module")
def aloop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def system(tiny_assets: Path, aloop: asyncio.AbstractEventLoop) -> Iterator[dict[str, Any]]:
    wd = workdir()
    model = tiny_assets / "model"
    adir = wd / "adapters"
    names = make_adapter_dir(tiny_assets / "adapters", adir, 20)
    (wd / "main").mkdir()
    (wd / "ref").mkdir()
    main, ref = ShardProc(model, adir, wd / "main"), ShardProc(model, adir, wd / "ref")
    router = None
    client = None
    try:
        main.wait_ready()
        ref.wait_ready()
        router = RouterProc(
            main, model, adir, wd, free_port(), free_port(), "--max-concurrent-requests", str(MAX_CONCURRENT)
        )
        client = aloop.run_until_complete(ShardClient.connect(ref.uds))
        cfg = EngineConfig(master_shard_uds_path=ref.uds, model_dir=model, max_batch_prefill_tokens=PREFILL)
        facts = aloop.run_until_complete(start_shards(client, cfg))
        registry = AdapterRegistry(
            ModelShape.from_model_dir(model), facts.dtype_bytes, facts.info.block_size, 1, adir
        )
        router.wait_healthy()
        yield {
            "router": router,
            "names": names,
            "ref": client,
            "facts": facts,
            "registry": registry,
            "tok": Tokenizer.from_file(str(model / "tokenizer.json")),
        }
    finally:
        if client is not None:
            aloop.run_until_complete(client.close())
        if router is not None:
            router.stop()
        main.stop()
        ref.stop()
        shutil.rmtree(wd, ignore_errors=True)


def _stub(router: RouterProc) -> pb_grpc.GenerationServiceStub:
    return pb_grpc.GenerationServiceStub(grpc.insecure_channel(router.grpc))


def _params(max_new: int, **extra: Any) -> pb.Parameters:
    return json_format.ParseDict({"stopping": {"max_new_tokens": max_new}, **extra}, pb.Parameters())


def _metric(router: RouterProc, sample: str) -> float:
    text = requests.get(router.http + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{sample} missing from /metrics"
    return float(m.group(1))


def _wait(cond: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


def _http_generate(router: RouterProc, text: str, adapter: str | None, max_new: int) -> dict[str, Any]:
    body = {"inputs": text, "parameters": {"max_new_tokens": max_new, "details": True, "adapter_id": adapter}}
    resp = requests.post(router.http + "/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


CASES = [("hello world", None), ("the quick brown fox", "a01"), ("serving many adapters", "a06")]


def test_grpc_and_http_tokens_equal_the_shard_alone(system: dict[str, Any], aloop: asyncio.AbstractEventLoop):
    router, ref, tok = system["router"], system["ref"], system["tok"]
    block, top = system["facts"].info.block_size, system["facts"].info.num_pages
    stub = _stub(router)
    for i, (text, adapter) in enumerate(CASES):
        if adapter is not None:  # adapter pages from the top of the pool, KV pages from the bottom
            n = system["registry"].get(adapter).pages
            aloop.run_until_complete(ref.load_adapter(adapter, list(range(top - n, top))))
            top -= n
        req = GenerateRequest(
            text=text,
            input_ids=tuple(tok.encode(text).ids),
            adapter_id=adapter,
            params=GenerateParams(max_new_tokens=10),
        )
        want = aloop.run_until_complete(
            direct_generate(ref, req, list(range(1 + 4 * i, 5 + 4 * i)), block, rid=i + 1, batch_id=i + 1)
        )
        msgs = list(
            stub.GenerateStream(
                pb.SingleGenerationRequest(
                    adapter_id=adapter, request=pb.GenerationRequest(text=text), params=_params(10)
                )
            )
        )
        assert msgs[0].input_token_count == len(req.input_ids)
        assert msgs[-1].generated_token_count == len(want.token_ids)
        assert msgs[-1].stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN)
        batched = stub.Generate(
            pb.BatchedGenerationRequest(
                adapter_id=adapter, requests=[pb.GenerationRequest(text=text)], params=_params(10)
            )
        )
        assert batched.responses[0].text == want.text
        details = _http_generate(router, text, adapter, 10)["details"]
        assert [t["id"] for t in details["tokens"]] == want.token_ids
        pieces = [m.text for m in msgs[1:] if m.generated_token_count and not m.stop_reason]
        assert pieces == [t["text"] for t in details["tokens"]]


def test_64_concurrent_streams_over_20_adapters_all_finish(
    system: dict[str, Any], aloop: asyncio.AbstractEventLoop
):
    router, names = system["router"], system["names"]
    hits_before = _metric(router, "chameleon_cache_hits_total") + _metric(
        router, "chameleon_cache_misses_total"
    )

    async def one(stub: pb_grpc.GenerationServiceStub, i: int) -> list[pb.GenerationResponse]:
        adapter = names[i % 20] if i % 5 else None
        req = pb.SingleGenerationRequest(
            adapter_id=adapter, request=pb.GenerationRequest(text=f"request {i}"), params=_params(4 + i % 9)
        )
        return [m async for m in stub.GenerateStream(req)]

    async def run() -> list[list[pb.GenerationResponse]]:
        async with grpc.aio.insecure_channel(router.grpc) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            return await asyncio.gather(*(one(stub, i) for i in range(64)))

    results = aloop.run_until_complete(run())
    for i, msgs in enumerate(results):
        last = msgs[-1]
        assert last.stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN), i
        assert 1 <= last.generated_token_count <= 4 + i % 9
        assert len(msgs) == last.generated_token_count + 2  # first message, one per token, last
    looked_up = _metric(router, "chameleon_cache_hits_total") + _metric(
        router, "chameleon_cache_misses_total"
    )
    assert looked_up - hits_before >= 51  # every adapter request (64 - 13 base) looked up the cache


def test_overload_then_cancellation_storm_leaves_no_leak(
    system: dict[str, Any], aloop: asyncio.AbstractEventLoop
):
    router, names = system["router"], system["names"]
    cancelled_before = _metric(router, "chameleon_request_cancelled")

    async def run() -> tuple[grpc.StatusCode, int]:
        async with grpc.aio.insecure_channel(router.grpc) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            calls = [
                stub.GenerateStream(
                    pb.SingleGenerationRequest(
                        adapter_id=names[i % 20] if i % 3 else None,
                        request=pb.GenerationRequest(text=f"long {i}"),
                        params=_params(600),
                    )
                )
                for i in range(MAX_CONCURRENT)
            ]
            readers = [asyncio.ensure_future(c.read()) for c in calls]
            await asyncio.gather(*readers)  # the first message: validated and accepted
            await asyncio.to_thread(
                _wait, lambda: _metric(router, "chameleon_requests_in_flight") == 64, "64 requests in flight"
            )
            try:
                await stub.Generate(
                    pb.BatchedGenerationRequest(
                        requests=[pb.GenerationRequest(text="one more")], params=_params(2)
                    )
                )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            status = (
                await asyncio.to_thread(
                    requests.post, router.http + "/generate", json={"inputs": "one more"}, timeout=30
                )
            ).status_code
            for c in calls:
                c.cancel()
            return code, status

    code, status = aloop.run_until_complete(run())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status == 429
    _wait(lambda: _metric(router, "chameleon_requests_in_flight") == 0, "every cancelled request released")
    assert _metric(router, "chameleon_request_cancelled") - cancelled_before == MAX_CONCURRENT
    assert _metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0
    assert _metric(router, "tgi_batch_current_size") == 0
    out = _http_generate(router, "after the storm", names[3], 4)
    assert out["details"]["generated_tokens"] >= 1
    assert _metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0


LONG = "many words " * 400
BOTH = [
    ("", {}, {}, None, "`inputs` cannot be empty"),
    (LONG, {}, {}, None, "`inputs` must have less than"),
    (
        "hi",
        {"max_new_tokens": 5000},
        {"stopping": {"max_new_tokens": 5000}},
        None,
        "`max_new_tokens` must be <=",
    ),
    ("hi", {"top_p": 1.5}, {"method": "SAMPLE", "sampling": {"top_p": 1.5}}, None, "`top_p` must be"),
    ("hi", {"temperature": -2}, {"method": "SAMPLE", "sampling": {"temperature": -2}}, None, "`temperature`"),
    ("hi", {"stop": list("abcde")}, {"stopping": {"stop_sequences": list("abcde")}}, None, "up to 4 stop"),
    ("hi", {"top_n_tokens": 9}, {"response": {"top_n_tokens": 9}}, None, "`top_n_tokens` must be"),
    ("hi", {}, {}, "no-such-adapter", "unknown adapter 'no-such-adapter'"),
    ("hi", {}, {}, "../a01", "not a plain name"),
]


@pytest.mark.parametrize(
    ("text", "tgi", "fmaas", "adapter", "message"),
    BOTH,
    ids=[
        "empty",
        "too_long",
        "max_new_tokens",
        "top_p",
        "temperature",
        "stop",
        "top_n",
        "unknown_adapter",
        "traversal",
    ],
)
def test_validation_errors_on_both_apis(
    system: dict[str, Any],
    text: str,
    tgi: dict[str, Any],
    fmaas: dict[str, Any],
    adapter: str | None,
    message: str,
):
    router = system["router"]
    resp = requests.post(
        router.http + "/generate",
        json={"inputs": text, "parameters": {**tgi, "adapter_id": adapter}},
        timeout=30,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error_type"] == "validation"
    assert message in resp.json()["error"]
    with pytest.raises(grpc.RpcError) as info:
        _stub(router).Generate(
            pb.BatchedGenerationRequest(
                adapter_id=adapter,
                requests=[pb.GenerationRequest(text=text)],
                params=json_format.ParseDict(fmaas, pb.Parameters()),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_adapter_management_on_both_apis(system: dict[str, Any]):
    router = system["router"]

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


def test_metrics_names(system: dict[str, Any]):
    router = system["router"]
    _http_generate(router, "count me", "a02", 3)
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
    assert json.loads(json.dumps(_metric(router, "tgi_request_success"))) >= 1


def test_text_generation_client(system: dict[str, Any]):
    from text_generation import Client
    from text_generation.errors import ValidationError as TgValidationError

    router = system["router"]
    client = Client(router.http, timeout=60)
    want = _http_generate(router, "hello world", None, 6)
    out = client.generate("hello world", max_new_tokens=6)
    assert out.generated_text == want["generated_text"]
    assert [t.id for t in out.details.tokens] == [t["id"] for t in want["details"]["tokens"]]
    streamed = list(client.generate_stream("hello world", max_new_tokens=6))
    assert [s.token.id for s in streamed] == [t["id"] for t in want["details"]["tokens"]]
    assert streamed[-1].generated_text == want["generated_text"]
    assert streamed[-1].details.generated_tokens == len(streamed)
    with pytest.raises(TgValidationError, match="up to 4 stop sequences"):
        client.generate("hello", max_new_tokens=2, stop_sequences=list("abcde"))


def test_huggingface_hub_inference_client(system: dict[str, Any]):
    from huggingface_hub import InferenceClient

    router = system["router"]
    client = InferenceClient(base_url=router.http, timeout=60)
    want = _http_generate(router, "hello adapters", "a03", 6)
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


def test_openai_client(system: dict[str, Any]):
    from openai import OpenAI, UnprocessableEntityError

    router = system["router"]
    client = OpenAI(base_url=router.http + "/v1", api_key="not-needed", timeout=60)
    want = _http_generate(router, "open models", "a04", 5)
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
