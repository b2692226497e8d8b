"""End to end on real processes (tiny model): tokens equal the shard alone, 64 concurrent streams, overload
and a cancellation storm without leaks, validation errors on both APIs."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import grpc
import pytest
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from google.protobuf import json_format

from router.engine.direct import direct_generate
from router.engine.types import GenerateParams, GenerateRequest
from tests.router_api.real import MAX_CONCURRENT, RealSystem, http_generate, metric, params, stub, wait_for

pytestmark = pytest.mark.slow

CASES = [("hello world", None), ("the quick brown fox", "a01"), ("serving many adapters", "a06")]


def test_grpc_and_http_tokens_equal_the_shard_alone(system: RealSystem, real_loop: asyncio.AbstractEventLoop):
    router, ref, tok = system.router, system.ref, system.tok
    block, top = system.facts.info.block_size, system.facts.info.num_pages
    grpc_stub = stub(router)
    for i, (text, adapter) in enumerate(CASES):
        if adapter is not None:  # adapter pages from the top of the pool, KV pages from the bottom
            n = system.registry.get(adapter).pages
            real_loop.run_until_complete(ref.load_adapter(adapter, list(range(top - n, top))))
            top -= n
        req = GenerateRequest(
            text=text,
            input_ids=tuple(tok.encode(text).ids),
            adapter_id=adapter,
            params=GenerateParams(max_new_tokens=10),
        )
        want = real_loop.run_until_complete(
            direct_generate(ref, req, list(range(1 + 4 * i, 5 + 4 * i)), block, rid=i + 1, batch_id=i + 1)
        )
        msgs = list(
            grpc_stub.GenerateStream(
                pb.SingleGenerationRequest(
                    adapter_id=adapter, request=pb.GenerationRequest(text=text), params=params(10)
                )
            )
        )
        assert msgs[0].input_token_count == len(req.input_ids)
        assert msgs[-1].generated_token_count == len(want.token_ids)
        assert msgs[-1].stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN)
        batched = grpc_stub.Generate(
            pb.BatchedGenerationRequest(
                adapter_id=adapter, requests=[pb.GenerationRequest(text=text)], params=params(10)
            )
        )
        assert batched.responses[0].text == want.text
        details = http_generate(router, text, adapter, 10)["details"]
        assert [t["id"] for t in details["tokens"]] == want.token_ids
        pieces = [m.text for m in msgs[1:] if m.generated_token_count and not m.stop_reason]
        assert pieces == [t["text"] for t in details["tokens"]]


def test_64_concurrent_streams_over_20_adapters_all_finish(
    system: RealSystem, real_loop: asyncio.AbstractEventLoop
):
    router, names = system.router, system.names
    hits_before = metric(router, "chameleon_cache_hits_total") + metric(
        router, "chameleon_cache_misses_total"
    )

    async def one(aio_stub: pb_grpc.GenerationServiceStub, i: int) -> list[pb.GenerationResponse]:
        adapter = names[i % 20] if i % 5 else None
        req = pb.SingleGenerationRequest(  # min_new_tokens on most, as caikit-style clients send it
            adapter_id=adapter, request=pb.GenerationRequest(text=f"request {i}"),
            params=params(4 + i % 9, min_new=i % 4),
        )
        return [m async for m in aio_stub.GenerateStream(req)]

    async def run() -> list[list[pb.GenerationResponse]]:
        async with grpc.aio.insecure_channel(router.grpc) as channel:
            aio_stub = pb_grpc.GenerationServiceStub(channel)
            return await asyncio.gather(*(one(aio_stub, i) for i in range(64)))

    results = real_loop.run_until_complete(run())
    for i, msgs in enumerate(results):
        last = msgs[-1]
        assert last.stop_reason in (pb.MAX_TOKENS, pb.EOS_TOKEN), i
        assert max(1, i % 4) <= last.generated_token_count <= 4 + i % 9
        assert len(msgs) == last.generated_token_count + 2  # first message, one per token, last
    looked_up = metric(router, "chameleon_cache_hits_total") + metric(router, "chameleon_cache_misses_total")
    assert looked_up - hits_before >= 51  # every adapter request (64 - 13 base) looked up the cache


def test_overload_then_cancellation_storm_leaves_no_leak(
    system: RealSystem, real_loop: asyncio.AbstractEventLoop
):
    router, names = system.router, system.names
    cancelled_before = metric(router, "chameleon_request_cancelled")

    async def run() -> tuple[grpc.StatusCode, int]:
        async with grpc.aio.insecure_channel(router.grpc) as channel:
            aio_stub = pb_grpc.GenerationServiceStub(channel)
            calls = [
                aio_stub.GenerateStream(
                    pb.SingleGenerationRequest(
                        adapter_id=names[i % 20] if i % 3 else None,
                        request=pb.GenerationRequest(text=f"long {i}"),
                        params=params(600, min_new=i % 2),
                    )
                )
                for i in range(MAX_CONCURRENT)
            ]
            readers = [asyncio.ensure_future(c.read()) for c in calls]
            await asyncio.gather(*readers)  # the first message: validated and accepted
            await asyncio.to_thread(
                wait_for,
                lambda: metric(router, "chameleon_requests_in_flight") == 64,
                "64 requests in flight",
            )
            try:
                await aio_stub.Generate(
                    pb.BatchedGenerationRequest(
                        requests=[pb.GenerationRequest(text="one more")], params=params(2)
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

    code, status = real_loop.run_until_complete(run())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status == 429
    wait_for(lambda: metric(router, "chameleon_requests_in_flight") == 0, "every cancelled request released")
    assert metric(router, "chameleon_request_cancelled") - cancelled_before == MAX_CONCURRENT
    assert metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0
    assert metric(router, "tgi_batch_current_size") == 0
    out = http_generate(router, "after the storm", names[3], 4)
    assert out["details"]["generated_tokens"] >= 1
    assert metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0


def test_tgis_min_new_tokens_and_length_penalty_end_to_end(system: RealSystem):
    """A length penalty from token 0 with decay 10 makes greedy EOS come almost at once; min_new_tokens
    holds EOS off (it is masked out of the logits) until that many tokens are generated."""
    grpc_stub = stub(system.router)
    penalty = {"decoding": {"length_penalty": {"start_index": 0, "decay_factor": 10.0}}}

    def generate(min_new: int) -> pb.GenerationResponse:
        req = pb.BatchedGenerationRequest(
            requests=[pb.GenerationRequest(text="the quick brown fox")], params=params(40, min_new, **penalty)
        )
        return grpc_stub.Generate(req).responses[0]

    early = generate(0)
    assert early.stop_reason == pb.EOS_TOKEN and early.generated_token_count < 6
    held = generate(9)
    assert held.stop_reason == pb.EOS_TOKEN and held.generated_token_count >= 9
    assert held.generated_token_count < 40  # the penalty still brings EOS right after the minimum
    one = pb.SingleGenerationRequest(
        request=pb.GenerationRequest(text="the quick brown fox"), params=params(40, 9, **penalty)
    )
    msgs = list(grpc_stub.GenerateStream(one))
    assert msgs[-1].stop_reason == pb.EOS_TOKEN
    assert msgs[-1].generated_token_count == held.generated_token_count
    assert len(msgs) == held.generated_token_count + 2
    full = grpc_stub.Generate(
        pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="hi")], params=params(12, 12))
    ).responses[0]
    assert (full.stop_reason, full.generated_token_count) == (pb.MAX_TOKENS, 12)


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
    system: RealSystem,
    text: str,
    tgi: dict[str, Any],
    fmaas: dict[str, Any],
    adapter: str | None,
    message: str,
):
    router = system.router
    resp = requests.post(
        router.http + "/generate",
        json={"inputs": text, "parameters": {**tgi, "adapter_id": adapter}},
        timeout=30,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error_type"] == "validation"
    assert message in resp.json()["error"]
    with pytest.raises(grpc.RpcError) as info:
        stub(router).Generate(
            pb.BatchedGenerationRequest(
                adapter_id=adapter,
                requests=[pb.GenerationRequest(text=text)],
                params=json_format.ParseDict(fmaas, pb.Parameters()),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_http_stream_disconnect_frees_the_request(system: RealSystem):
    router = system.router
    cancelled_before = metric(router, "chameleon_request_cancelled")
    host, port = router.http.removeprefix("http://").split(":")
    body = json.dumps({"inputs": "leave early", "parameters": {"max_new_tokens": 1500}}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = "POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"data:" not in received:  # the first token arrived: the request is in the batch
            received += sock.recv(4096)
    wait_for(lambda: metric(router, "chameleon_requests_in_flight") == 0, "the disconnected stream released")
    assert metric(router, "chameleon_request_cancelled") - cancelled_before == 1
    assert metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0


def test_step_timings_reach_metrics(system: RealSystem):
    """The engine's per-step hook feeds tgi_batch_*_duration{method} on a real system."""
    router = system.router

    def count(sample: str) -> float:
        try:
            return metric(router, sample)
        except AssertionError:
            return 0.0

    prefill = 'tgi_batch_inference_duration_count{method="prefill"}'
    decode = 'tgi_batch_forward_duration_count{method="decode"}'
    before = (count(prefill), count(decode))
    http_generate(router, "metrics please", None, 4)
    assert count(prefill) > before[0]
    assert count(decode) > before[1]
