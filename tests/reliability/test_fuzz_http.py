"""Hypothesis fuzz over the HTTP API of a real router (tiny shard): random and malformed bodies on every
route. Each case gets a valid answer or a clear JSON error (4xx, never 5xx or 424), the router stays up,
and the reference request sent after each case still gets exactly the same greedy tokens."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.procs import RouterProc
from tests.reliability.system import BUSY_S, Shard, golden_ids, is_error_body, metric, router_on
from tests.router_api.real import wait_for

pytestmark = pytest.mark.slow

ROUTES = ("/generate", "/generate_stream", "/", "/tokenize", "/v1/completions", "/v1/chat/completions")
STREAMING = {"/generate_stream"}


@pytest.fixture(scope="module")
def fuzz_router(shard: Shard) -> Iterator[tuple[RouterProc, list[int]]]:
    with router_on(shard, "fuzz-http", "--max-new-tokens-default", "16", "--max-concurrent-requests", "8",
                   "--max-request-bytes", str(2 << 20)) as router:
        yield router, golden_ids(router)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                   max_size=4), max_leaves=12)
small_new = st.one_of(st.integers(-3, 24), values)
texts = st.one_of(st.text(max_size=120), st.text(alphabet=st.characters(codec="utf-16"), max_size=40),
                  values)
adapters = st.one_of(st.none(), st.sampled_from(
    ["a00", "a03", "../a00", "/etc/passwd", "a00/../a01", "..", "", "nope", "a00\x00", "%2e%2e"]), values)
tgi_params = st.fixed_dictionaries({}, optional={
    "max_new_tokens": small_new, "temperature": values, "top_k": values, "top_p": values,
    "typical_p": values, "repetition_penalty": values, "frequency_penalty": values, "seed": values,
    "do_sample": values, "details": values, "decoder_input_details": values, "top_n_tokens": values,
    "truncate": values, "return_full_text": values, "watermark": values, "best_of": values,
    "stop": st.one_of(values, st.lists(st.text(max_size=6), max_size=40)), "adapter_id": adapters,
    "grammar": values, "an_unknown_field": values,
})
tgi_body = st.fixed_dictionaries({"inputs": texts}, optional={"parameters": st.one_of(tgi_params, values),
                                                             "stream": values, "unknown": values})
messages = st.lists(st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system",
                                                                               "assistant"]), values),
                                           "content": texts}), max_size=3)
openai_body = st.fixed_dictionaries({}, optional={
    "model": adapters, "prompt": texts, "messages": st.one_of(messages, values), "max_tokens": small_new,
    "temperature": values, "top_p": values, "n": values, "stop": values, "stream": st.booleans(),
    "logprobs": values, "top_logprobs": values, "seed": values, "presence_penalty": values,
    "frequency_penalty": values, "echo": values, "tools": values,
})


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(route, raw body, read only the first chunk of the answer and hang up)."""
    route = draw(st.sampled_from(ROUTES))
    kind = draw(st.sampled_from(["json", "json", "json", "raw", "truncated"]))
    if kind == "raw":
        return route, draw(st.binary(max_size=64)), False
    body = draw(openai_body if route.startswith("/v1/") else tgi_body)
    raw = json.dumps(body, allow_nan=True).encode()
    if kind == "truncated":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    return route, raw, draw(st.booleans())


def _read_sse(resp: requests.Response) -> None:
    """Every event of a stream is JSON (or OpenAI's [DONE]); the stream ends."""
    for line in resp.iter_lines():
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload != b"[DONE]":
                json.loads(payload)


def _hang_up_after_first_chunk(router: RouterProc, route: str, raw: bytes) -> None:
    host, port = router.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        sock.recv(256)


def check_case(router: RouterProc, route: str, raw: bytes, hang_up: bool) -> None:
    if hang_up:
        _hang_up_after_first_chunk(router, route, raw)
        return
    headers = {"Content-Type": "application/json"}
    with requests.post(router.http + route, data=raw, headers=headers, timeout=60, stream=True) as resp:
        status, ctype = resp.status_code, resp.headers.get("Content-Type", "")
        assert status == 200 or (400 <= status < 500 and status != 424), (status, resp.text[:500])
        if status != 200:
            assert is_error_body(resp.json()), resp.text[:500]
        elif ctype.startswith("text/event-stream"):
            _read_sse(resp)
        else:
            assert isinstance(resp.json(), (dict, list))


HUGE = json.dumps({"inputs": "many words " * 100_000, "parameters": {"max_new_tokens": 2}}).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases())
@example(case=("/generate", HUGE, False))  # a 1.1 MB prompt: refused (too many tokens), not crashed
@example(case=("/generate", HUGE * 2, False))  # over --max-request-bytes: 413 before tokenization
@example(case=("/generate", b'{"inputs": "\xff\xfe bad utf-8"}', False))
@example(case=("/generate", b'{"inputs": "lone \\ud800 surrogate", "parameters": {"max_new_tokens": 2}}',
               False))
@example(case=("/generate", b'{"inputs": "x", "parameters": {"temperature": NaN, "do_sample": true}}', False))
@example(case=("/generate", b'{"inputs": "x", "parameters": {"max_new_tokens": 1e400}}', False))
@example(case=("/generate", json.dumps({"inputs": "x", "parameters": {"stop": ["s"] * 5000}}).encode(),
               False))
@example(case=("/generate_stream", b'{"inputs": "x", "parameters": {"max_new_tokens": 500}}', True))
@example(case=("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "stream": true, '
                                       b'"max_tokens": 400}', True))
@example(case=("/generate", b'{"inputs": "x", "parameters": {"adapter_id": "../../etc"}}', False))
@example(case=("/generate", b'{"inputs": ', False))
def test_http_fuzz_keeps_serving_the_same_tokens(fuzz_router: tuple[RouterProc, list[int]],
                                                  case: tuple[str, bytes, bool]) -> None:
    router, golden = fuzz_router
    check_case(router, *case)
    router.check_alive("router")
    assert golden_ids(router) == golden


def test_after_the_fuzz_nothing_leaks(fuzz_router: tuple[RouterProc, list[int]]) -> None:
    router, _ = fuzz_router
    wait_for(lambda: metric(router, "chameleon_requests_in_flight") == 0, "hung-up streams released",
             BUSY_S)
    assert metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0
    assert metric(router, "tgi_batch_current_size") == 0
