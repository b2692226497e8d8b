"""Every validation error, on HTTP (422 + TGI error JSON) and on gRPC (INVALID_ARGUMENT), with a message a
person can act on; refused requests never reach the engine. Overload is 429 / RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from google.protobuf import json_format

from tests.router_api.fakes import FakeEngine, ServedRouter

LONG = "hello world " * 40  # > 48 tokens (the fake engine's max_input_tokens)

# (id, inputs, TGI parameters, fmaas Parameters as JSON, adapter id, words the message must contain)
BOTH: list[tuple[str, str, dict[str, Any], dict[str, Any], str | None, str]] = [
    ("empty", "", {}, {}, None, "`inputs` cannot be empty"),
    ("too_long", LONG, {}, {}, None, "must have less than 48 tokens"),
    (
        "total_tokens",
        "hello",
        {"max_new_tokens": 100},
        {"stopping": {"max_new_tokens": 100}},
        None,
        "must be <= 96",
    ),
    (
        "top_p",
        "hello",
        {"top_p": 1.5},
        {"method": "SAMPLE", "sampling": {"top_p": 1.5}},
        None,
        "`top_p` must be",
    ),
    (
        "typical_p",
        "hello",
        {"typical_p": 2.0},
        {"method": "SAMPLE", "sampling": {"typical_p": 2.0}},
        None,
        "`typical_p` must be",
    ),
    (
        "temperature",
        "hello",
        {"temperature": -1.0},
        {"method": "SAMPLE", "sampling": {"temperature": -1.0}},
        None,
        "`temperature` must be",
    ),
    (
        "repetition_penalty",
        "hello",
        {"repetition_penalty": -1.0},
        {"decoding": {"repetition_penalty": -1.0}},
        None,
        "`repetition_penalty` must be",
    ),
    (
        "stop_sequences",
        "hello",
        {"stop": list("abcde")},
        {"stopping": {"stop_sequences": list("abcde")}},
        None,
        "supports up to 4 stop sequences. Given: 5",
    ),
    (
        "top_n_tokens",
        "hello",
        {"top_n_tokens": 6},
        {"response": {"top_n_tokens": 6}},
        None,
        "`top_n_tokens` must be >= 0 and <= 5",
    ),
    ("truncate", "hello", {"truncate": 100}, {"truncate_input_tokens": 100}, None, "`truncate` must be"),
    ("unknown_adapter", "hello", {}, {}, "gamma", "unknown adapter 'gamma'"),
    ("path_traversal", "hello", {}, {}, "../alpha", "not a plain name"),
    ("slash_in_adapter", "hello", {}, {}, "x/alpha", "not a plain name"),
]


def _http(router: ServedRouter, body: Any, path: str = "/generate") -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(
        router.http + path, data=data, headers={"Content-Type": "application/json"}, timeout=30
    )


def _stub(router: ServedRouter) -> pb_grpc.GenerationServiceStub:
    return pb_grpc.GenerationServiceStub(grpc.insecure_channel(router.grpc))


def _grpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.mark.parametrize(
    ("inputs", "params", "message"),
    [pytest.param(c[1], {**c[2], "adapter_id": c[4]}, c[5], id=c[0]) for c in BOTH],
)
def test_http_validation_error(router: ServedRouter, inputs: str, params: dict[str, Any], message: str):
    resp = _http(router, {"inputs": inputs, "parameters": params})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error_type"] == "validation"
    assert message in resp.json()["error"]
    assert router.engine.requests == []


@pytest.mark.parametrize(
    ("inputs", "params", "adapter", "message"), [pytest.param(c[1], c[3], c[4], c[5], id=c[0]) for c in BOTH]
)
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_grpc_validation_error(
    router: ServedRouter, rpc: str, inputs: str, params: dict[str, Any], adapter: str | None, message: str
):
    p = json_format.ParseDict(params, pb.Parameters())
    stub = _stub(router)
    if rpc == "Generate":
        req = pb.BatchedGenerationRequest(
            requests=[pb.GenerationRequest(text=inputs)], params=p, adapter_id=adapter
        )
        err = _grpc_error(lambda: stub.Generate(req))
    else:
        one = pb.SingleGenerationRequest(
            request=pb.GenerationRequest(text=inputs), params=p, adapter_id=adapter
        )
        err = _grpc_error(lambda: list(stub.GenerateStream(one)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()
    assert router.engine.requests == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"top_k": -1}, "`top_k` must be strictly positive"),
        ({"frequency_penalty": 3.0}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"best_of": 2}, "`best_of` must be > 0 and <= 1"),
        ({"watermark": True}, "`watermark` is not supported"),
        ({"grammar": {"type": "regex", "value": "a+"}}, "`grammar` (guided decoding) is not supported"),
        ({"temperature": "hot"}, "`parameters.temperature` must be a number"),
        ({"stop": "x", "max_new_tokens": 1.5}, "`parameters.max_new_tokens` must be an integer"),
    ],
)
def test_http_only_validation_errors(router: ServedRouter, params: dict[str, Any], message: str):
    resp = _http(router, {"inputs": "hello", "parameters": params})
    assert resp.status_code == 422, resp.text
    assert message in resp.json()["error"]
    assert router.engine.requests == []


def test_http_malformed_bodies(router: ServedRouter):
    assert "not valid JSON" in _http(router, b"{nope").json()["error"]
    assert "`inputs` must be a string" in _http(router, {"inputs": 3}).json()["error"]
    resp = _http(
        router, {"inputs": "hello", "parameters": {"decoder_input_details": True}}, "/generate_stream"
    )
    assert resp.status_code == 422
    assert "not supported when streaming" in resp.json()["error"]


def test_http_body_size_capped_before_tokenization(router: ServedRouter):
    resp = _http(router, {"inputs": "x" * 5000})  # --max-request-bytes 4096 in the fixture
    assert resp.status_code == 413
    assert resp.json() == {
        "error": "request body too large: the limit is 4096 bytes (--max-request-bytes)",
        "error_type": "validation",
    }
    assert router.engine.requests == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stopping": {"max_new_tokens": 3, "min_new_tokens": 5}},
         "`min_new_tokens` must be <= `max_new_tokens`. Given: 5 `min_new_tokens` and 3 `max_new_tokens`"),
        ({"stopping": {"min_new_tokens": 200}}, "`inputs` tokens + `min_new_tokens` must be <= 96"),
        ({"decoding": {"length_penalty": {"start_index": 1, "decay_factor": 0.5}}},
         "`length_penalty.decay_factor` must be >= 1.0 and <= 10.0"),
        ({"decoding": {"length_penalty": {"start_index": 1, "decay_factor": 11}}},
         "`length_penalty.decay_factor` must be >= 1.0 and <= 10.0"),
        ({"decoding": {"length_penalty": {"start_index": 1, "decay_factor": "NaN"}}},
         "`length_penalty.decay_factor` must be a finite number"),
        ({"decoding": {"length_penalty": {"start_index": 5000, "decay_factor": 1.5}}},
         "`length_penalty.start_index` must be >= 0 and < 96"),
        ({"method": "SAMPLE", "sampling": {"temperature": "NaN"}}, "`temperature` must be a finite number"),
        ({"sampling": {"top_p": "Infinity"}}, "`top_p` must be a finite number"),
        ({"decoding": {"repetition_penalty": "-Infinity"}}, "`repetition_penalty` must be a finite number"),
        ({"decoding": {"regex": "a+"}}, "guided decoding"),
    ],
)
def test_grpc_only_validation_errors(router: ServedRouter, params: dict[str, Any], message: str):
    req = pb.BatchedGenerationRequest(
        requests=[pb.GenerationRequest(text="hello")], params=json_format.ParseDict(params, pb.Parameters())
    )
    err = _grpc_error(lambda: _stub(router).Generate(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()


def test_grpc_message_size_capped(router: ServedRouter):
    req = pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="x" * 5000)])
    assert _grpc_error(lambda: _stub(router).Generate(req)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert router.engine.requests == []


def test_truncation_keeps_the_last_tokens(router: ServedRouter):
    resp = _http(router, {"inputs": LONG, "parameters": {"truncate": 5, "max_new_tokens": 2}})
    assert resp.status_code == 200, resp.text
    (req,) = router.engine.requests
    full = router.server.service.tokenizer.encode(LONG).ids
    assert req.input_ids == full[-5:]
    assert req.params.truncate == 5


def test_unknown_adapter_falls_back_to_base_when_asked(tok_dir):
    served = ServedRouter(FakeEngine(), tok_dir, unknown_adapter="base")
    try:
        resp = _http(served, {"inputs": "hello", "parameters": {"adapter_id": "gamma", "max_new_tokens": 2}})
        assert resp.status_code == 200, resp.text
        assert served.engine.requests[0].adapter_id is None
        # a name that is not plain is still refused: the fallback is for unknown names only
        resp = _http(served, {"inputs": "hello", "parameters": {"adapter_id": "../gamma"}})
        assert resp.status_code == 422
    finally:
        served.close()


def _wait_for(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.01)


def test_overload_is_refused_at_once_on_both_apis(router: ServedRouter):
    import asyncio

    hold = asyncio.Event()
    router.engine.script.hold = hold
    stub = _stub(router)
    req = pb.BatchedGenerationRequest(
        requests=[pb.GenerationRequest(text="hello")],
        params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=2)),
    )
    futures = [stub.Generate.future(req) for _ in range(4)]  # the fake engine's maximum
    _wait_for(lambda: router.engine.in_flight == 4, "4 requests in flight")
    err = _grpc_error(lambda: stub.Generate(req))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the maximum is 4" in err.details()
    resp = _http(router, {"inputs": "hello", "parameters": {"max_new_tokens": 2}})
    assert resp.status_code == 429
    assert resp.json()["error_type"] == "overloaded"
    for path in ("/generate_stream", "/v1/completions"):  # refused before a stream opens
        body = {"inputs": "hello"} if path == "/generate_stream" else {"prompt": "hello", "stream": True}
        resp = _http(router, body, path)
        assert (resp.status_code, resp.json()["error_type"]) == (429, "overloaded"), path
    one = pb.SingleGenerationRequest(request=pb.GenerationRequest(text="hello"), params=req.params)
    received: list[pb.GenerationResponse] = []
    err = _grpc_error(lambda: received.extend(stub.GenerateStream(one)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert received == []  # not even the first message
    router.loop.call_soon_threadsafe(hold.set)
    assert all(f.result(30).responses[0].generated_token_count == 2 for f in futures)
