"""TGI HTTP routes over a fake engine: answer shapes, the SSE format, errors inside a stream, cancellation."""

from __future__ import annotations

import json
import socket
from typing import Any

import requests

from tests.router_api.fakes import ServedRouter


def _post(router: ServedRouter, path: str, body: dict[str, Any], **kw: Any) -> requests.Response:
    return requests.post(router.http + path, json=body, timeout=30, **kw)


def _sse(resp: requests.Response) -> list[str]:
    """The raw lines of an SSE body, blank separators dropped."""
    return [line for line in resp.text.split("\n") if line]


def test_generate_shape_with_details(router: ServedRouter):
    body = {
        "inputs": "hello",
        "parameters": {
            "max_new_tokens": 3,
            "details": True,
            "decoder_input_details": True,
            "top_n_tokens": 2,
            "seed": 5,
            "adapter_id": "alpha",
        },
    }
    resp = _post(router, "/generate", body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["generated_text"] == " t0 t1 t2"
    d = out["details"]
    assert (d["finish_reason"], d["generated_tokens"], d["seed"]) == ("length", 3, 5)
    assert d["tokens"][1] == {"id": 101, "text": " t1", "logprob": -0.5, "special": False}
    assert [t["text"] for t in d["top_tokens"][0]] == [" t0", " t1"]
    n_in = len(router.engine.requests[0].input_ids)
    assert len(d["prefill"]) == n_in and set(d["prefill"][0]) == {"id", "text", "logprob"}
    assert resp.headers["x-generated-tokens"] == "3"
    assert resp.headers["x-prompt-tokens"] == str(n_in)
    assert router.engine.requests[0].adapter_id == "alpha"


def test_generate_without_details_and_full_text(router: ServedRouter):
    out = _post(
        router,
        "/generate",
        {"inputs": "hello", "parameters": {"max_new_tokens": 2, "return_full_text": True}},
    ).json()
    assert out == {"generated_text": "hello t0 t1"}


def test_compat_route_returns_a_list_or_a_stream(router: ServedRouter):
    listed = _post(router, "/", {"inputs": "hello", "parameters": {"max_new_tokens": 2}})
    assert listed.json() == [{"generated_text": " t0 t1"}]
    streamed = _post(router, "/", {"inputs": "hello", "stream": True, "parameters": {"max_new_tokens": 2}})
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert len(_sse(streamed)) == 2


def test_generate_stream_events_exactly(router: ServedRouter):
    resp = _post(
        router, "/generate_stream", {"inputs": "hello", "parameters": {"max_new_tokens": 3, "seed": 9}}
    )
    lines = _sse(resp)
    assert resp.text.endswith("\n\n")
    assert all(line.startswith("data:{") for line in lines)
    events = [json.loads(line[len("data:") :]) for line in lines]
    assert [e["index"] for e in events] == [1, 2, 3]
    for e in events[:-1]:
        assert e == {
            "index": e["index"],
            "token": e["token"],
            "top_tokens": None,
            "generated_text": None,
            "details": None,
        }
    last = events[-1]
    assert last["token"] == {"id": 102, "text": " t2", "logprob": -0.5, "special": False}
    assert last["generated_text"] == " t0 t1 t2"
    n_in = len(router.engine.requests[0].input_ids)
    assert last["details"] == {
        "finish_reason": "length",
        "generated_tokens": 3,
        "seed": 9,
        "input_length": n_in,
    }


def test_stream_top_tokens(router: ServedRouter):
    resp = _post(
        router, "/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 1, "top_n_tokens": 3}}
    )
    (event,) = [json.loads(line[5:]) for line in _sse(resp)]
    assert [t["id"] for t in event["top_tokens"]] == [100, 101, 102]


def test_final_event_a_step_late_still_closes_the_stream(router: ServedRouter):
    router.engine.script.final_late = True
    events = [
        json.loads(line[5:])
        for line in _sse(
            _post(router, "/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
        )
    ]
    texts = "".join(e["token"]["text"] for e in events)
    assert texts == " t0 t1"
    assert events[-1]["generated_text"] == " t0 t1"
    assert events[-1]["details"]["generated_tokens"] == 2


def test_error_inside_a_stream_is_a_data_event(router: ServedRouter):
    router.engine.script.fail_after = 1
    lines = _sse(_post(router, "/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 4}}))
    events = [json.loads(line[5:]) for line in lines]
    assert events[0]["token"]["text"] == " t0"
    assert events[-1] == {"error": "shard rank 0 failed: boom", "error_type": "generation"}


def test_generation_error_is_424(router: ServedRouter):
    router.engine.script.fail_after = 0
    resp = _post(router, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert resp.status_code == 424
    assert resp.json() == {"error": "shard rank 0 failed: boom", "error_type": "generation"}


def test_client_disconnect_cancels_the_request(router: ServedRouter):
    import asyncio

    hold = asyncio.Event()
    router.engine.script.hold = hold
    host, port = router.http.removeprefix("http://").split(":")
    body = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 50}}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        _wait(lambda: router.engine.in_flight == 1)
    router.loop.call_soon_threadsafe(hold.set)
    _wait(lambda: len(router.engine.cancelled) == 1)
    assert router.engine.finished == []
    assert router.engine.in_flight == 0


def test_tokenize_info_health_metrics(router: ServedRouter):
    toks = _post(router, "/tokenize", {"inputs": "hello world"}).json()
    assert "".join(t["text"] for t in toks) == "hello world"
    assert set(toks[0]) == {"id", "text", "start", "stop"}
    info = requests.get(router.http + "/info", timeout=10).json()
    for key in (
        "model_id",
        "model_sha",
        "model_pipeline_tag",
        "max_concurrent_requests",
        "max_best_of",
        "max_stop_sequences",
        "max_input_tokens",
        "max_total_tokens",
        "validation_workers",
        "max_client_batch_size",
        "router",
        "version",
    ):
        assert key in info
    assert (info["model_id"], info["max_total_tokens"], info["max_stop_sequences"]) == ("tiny-model", 96, 4)
    assert requests.get(router.http + "/health", timeout=10).status_code == 200
    router.engine.healthy = False
    bad = requests.get(router.http + "/health", timeout=10)
    assert (bad.status_code, bad.json()) == (503, {"error": "unhealthy", "error_type": "healthcheck"})


def _wait(cond: Any) -> None:
    import time

    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)
