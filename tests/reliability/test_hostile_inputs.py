"""Every parameter of every client API, sent hostile values (NaN, ±inf, out of range, huge, wrong types)
while a second client keeps sending the known-good request: each hostile request gets an answer or a
clear refusal (HTTP 4xx JSON / a gRPC status with a message, never 5xx, INTERNAL, UNKNOWN or
UNAVAILABLE), the good client's answers never change and never fail, and the router never enters
recovery (chameleon_shard_faults_total stays 0, /health stays 200).

The table `HTTP_PARAMS` / `FMAAS_PARAMS` names every parameter the APIs read; hypothesis draws the
values of each parameter's kind. Pathological bodies (deep nesting, huge bodies, invalid UTF-8) and a
refused 10,000-request fmaas batch are cases of their own.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chameleon.tools.bench.soak_watch import integrity, read_metrics
from tests.procs import RouterProc
from tests.reliability.system import (
    GOLDEN_NEW,
    GOLDEN_TEXT,
    Shard,
    golden_grpc_text,
    golden_ids,
    golden_request,
    is_error_body,
    metric,
    router_on,
)
from tests.router_api.real import wait_for

pytestmark = pytest.mark.slow

NAN, INF = math.nan, math.inf
# --- hostile values by kind --------------------------------------------------------------------------
odd_types = st.sampled_from([None, "1", "nan", [], [1.0], {}, {"a": 1}, True, False])
floats = st.one_of(st.sampled_from([NAN, INF, -INF, -0.0, 0.0, -1.0, 1e-45, 1e-300, 1e300, 3.5e38, 1.0,
                                    2.0, 0.5]), st.floats(allow_nan=True, allow_infinity=True), odd_types)
ints = st.one_of(st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**32 - 1, 2**63, 2**64, 2**70, -(2**63)]),
                 st.integers(-(2**70), 2**70), st.sampled_from([NAN, INF, 1.5, 1e400]), odd_types)
texts = st.one_of(st.sampled_from(["", "\x00", "x" * 200_000, "../../etc/passwd", "\ud800", "a00",
                                   "🙂" * 500]),
                  st.text(max_size=40), odd_types)
text_lists = st.one_of(st.sampled_from([["s"] * 10_000, ["x" * 5_000], [""], ["\ud800"], [1, 2], [None]]),
                       st.lists(st.text(max_size=8), max_size=12), texts)
bools = st.one_of(st.booleans(), odd_types, st.sampled_from([0, 1, "true"]))
anything = st.one_of(floats, ints, texts, text_lists)
KINDS: dict[str, st.SearchStrategy[Any]] = {"float": floats, "int": ints, "text": texts, "texts": text_lists,
                                            "bool": bools, "any": anything}

# --- every parameter of every HTTP API: (route, where, name, kind) -----------------------------------
TGI_ROUTES = ("/generate", "/generate_stream")
TGI = {"temperature": "float", "top_k": "int", "top_p": "float", "typical_p": "float",
       "repetition_penalty": "float", "frequency_penalty": "float", "seed": "int", "max_new_tokens": "int",
       "truncate": "int", "top_n_tokens": "int", "best_of": "int", "stop": "texts", "adapter_id": "text",
       "do_sample": "bool", "details": "bool", "decoder_input_details": "bool", "return_full_text": "bool",
       "watermark": "bool", "grammar": "any"}
COMPLETIONS = {"model": "text", "prompt": "texts", "max_tokens": "int", "temperature": "float",
               "top_p": "float", "n": "int", "stop": "texts", "seed": "int", "logprobs": "int",
               "frequency_penalty": "float", "presence_penalty": "float", "repetition_penalty": "float",
               "best_of": "int", "stream": "bool", "echo": "bool", "suffix": "text", "logit_bias": "any"}
CHAT = {"model": "text", "messages": "any", "max_tokens": "int", "max_completion_tokens": "int",
        "temperature": "float", "top_p": "float", "n": "int", "stop": "texts", "seed": "int",
        "logprobs": "bool", "top_logprobs": "int", "frequency_penalty": "float", "presence_penalty": "float",
        "stream": "bool", "tools": "any", "response_format": "any", "stream_options": "any"}
HTTP_PARAMS = ([(r, "parameters", k, v) for r in TGI_ROUTES for k, v in TGI.items()]
               + [(r, "", "inputs", "text") for r in TGI_ROUTES]
               + [("/v1/completions", "", k, v) for k, v in COMPLETIONS.items()]
               + [("/v1/chat/completions", "", k, v) for k, v in CHAT.items()]
               + [("/tokenize", "", "inputs", "text")])


def http_body(route: str, where: str, name: str, value: Any) -> dict[str, Any]:
    if route.startswith("/v1/chat"):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    elif route.startswith("/v1/"):
        body = {"prompt": "hello", "max_tokens": 4}
    else:
        body = {"inputs": "hello", "parameters": {"max_new_tokens": 4}}
    (body[where] if where else body)[name] = value
    return body


# --- every field of fmaas Parameters and of the batched request: (name, kind, setter) -----------------
f32 = st.one_of(st.sampled_from([NAN, INF, -INF, -1.0, 0.0, 1e-45, 3.4e38, 1.0, 2.0, 0.5]),
                st.floats(width=32, allow_nan=True, allow_infinity=True))
u32 = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
u64 = st.one_of(st.sampled_from([0, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
grpc_texts = st.one_of(st.sampled_from(["", "\x00", "x" * 200_000, "../../etc", "a00"]), st.text(max_size=40))
Setter = Callable[[pb.BatchedGenerationRequest, Any], None]


def _set(path: str) -> Setter:
    *parents, leaf = path.split(".")

    def setter(req: pb.BatchedGenerationRequest, value: Any) -> None:
        msg: Any = req
        for part in parents:
            msg = getattr(msg, part)
        setattr(msg, leaf, value)
    return setter


def _sampling(path: str) -> Setter:
    inner = _set(path)

    def setter(req: pb.BatchedGenerationRequest, value: Any) -> None:
        req.params.method = pb.SAMPLE
        inner(req, value)
    return setter


def _stops(req: pb.BatchedGenerationRequest, value: list[str]) -> None:
    req.params.stopping.stop_sequences.extend(value)


FMAAS_PARAMS: dict[str, tuple[st.SearchStrategy[Any], Setter]] = {
    "method": (st.integers(0, 7), _set("params.method")),
    "sampling.temperature": (f32, _sampling("params.sampling.temperature")),
    "sampling.top_k": (u32, _sampling("params.sampling.top_k")),
    "sampling.top_p": (f32, _sampling("params.sampling.top_p")),
    "sampling.typical_p": (f32, _sampling("params.sampling.typical_p")),
    "sampling.seed": (u64, _sampling("params.sampling.seed")),
    "decoding.repetition_penalty": (f32, _set("params.decoding.repetition_penalty")),
    "decoding.length_penalty.start_index": (u32, _set("params.decoding.length_penalty.start_index")),
    "decoding.length_penalty.decay_factor": (f32, _set("params.decoding.length_penalty.decay_factor")),
    "stopping.max_new_tokens": (u32, _set("params.stopping.max_new_tokens")),
    "stopping.min_new_tokens": (u32, _set("params.stopping.min_new_tokens")),
    "stopping.time_limit_millis": (u32, _set("params.stopping.time_limit_millis")),
    "stopping.stop_sequences": (st.sampled_from([["s"] * 10_000, ["x" * 5_000], [""], ["a", "b"]]), _stops),
    "stopping.include_stop_sequence": (st.booleans(), _set("params.stopping.include_stop_sequence")),
    "response.top_n_tokens": (u32, _set("params.response.top_n_tokens")),
    "response.token_ranks": (st.booleans(), _set("params.response.token_ranks")),
    "truncate_input_tokens": (u32, _set("params.truncate_input_tokens")),
    "adapter_id": (grpc_texts, _set("adapter_id")),
    "prefix_id": (grpc_texts, _set("prefix_id")),
    "text": (grpc_texts, lambda req, v: setattr(req.requests[0], "text", v)),
    "requests": (st.integers(0, 300), lambda req, n: req.requests.extend(
        pb.GenerationRequest(text="hello") for _ in range(n))),
}
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}


# --- the second client -------------------------------------------------------------------------------
class GoodClient:
    """Sends the reference request over HTTP and gRPC (own connections) until stopped; records every
    answer that differs from the first ones or fails."""

    def __init__(self, router: RouterProc, ids: list[int], text: str) -> None:
        self.router, self.ids, self.text = router, ids, text
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._turn = threading.Lock()  # held for each round; `paused()` takes it between rounds
        self._thread = threading.Thread(target=self._run, daemon=True)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No good request in flight inside this block."""
        with self._turn:
            yield

    def __enter__(self) -> GoodClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        body = {"inputs": GOLDEN_TEXT, "parameters": {"max_new_tokens": GOLDEN_NEW, "details": True}}
        with requests.Session() as http, grpc.insecure_channel(self.router.grpc) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            while not self._stop.is_set():
                with self._turn:
                    self._round(http, stub, body)
                time.sleep(0.001)  # let `paused()` take the lock

    def _round(self, http: requests.Session, stub: pb_grpc.GenerationServiceStub,
               body: dict[str, Any]) -> None:
        try:
            r = http.post(self.router.http + "/generate", json=body, timeout=120)
            got = [t["id"] for t in r.json()["details"]["tokens"]] if r.status_code == 200 else r.text
            if got != self.ids:
                self.failures.append(f"HTTP: {r.status_code} {got!r}")
            text = stub.Generate(golden_request(), timeout=120).responses[0].text
            if text != self.text:
                self.failures.append(f"gRPC: {text!r}")
            self.answers += 1
        except Exception as exc:  # any failure of the good client is the finding
            self.failures.append(f"{type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def hostile(shard: Shard) -> Iterator[tuple[RouterProc, GoodClient]]:
    with router_on(shard, "hostile", "--max-new-tokens-default", "8", "--max-concurrent-requests", "32",
                   "--max-client-batch-size", "64") as router:
        ids = golden_ids(router)
        with grpc.insecure_channel(router.grpc) as channel:
            text = golden_grpc_text(channel)
        with GoodClient(router, ids, text) as good:
            wait_for(lambda: good.answers > 0 or bool(good.failures), "the good client answered once")
            yield router, good


def assert_unharmed(router: RouterProc, good: GoodClient) -> None:
    router.check_alive("router")
    assert good.failures == [], good.failures[:3]
    assert metric(router, "chameleon_shard_faults_total") == 0
    assert requests.get(router.http + "/health", timeout=30).status_code == 200


def post(router: RouterProc, route: str, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    with requests.post(router.http + route, data=raw, headers=headers, timeout=120, stream=True) as resp:
        status = resp.status_code
        assert status == 200 or (400 <= status < 500 and status != 424), (status, resp.text[:300])
        if status != 200:
            assert is_error_body(resp.json()), resp.text[:300]
        else:
            for _ in resp.iter_content(1 << 16):  # a stream runs to its end; errors inside it are JSON
                pass


@pytest.mark.parametrize("route,where,name,kind", HTTP_PARAMS,
                         ids=[f"{r}:{n}" for r, _, n, _ in HTTP_PARAMS])
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_http_parameter(hostile: tuple[RouterProc, GoodClient], route: str, where: str, name: str,
                              kind: str, data: st.DataObject) -> None:
    router, good = hostile
    value = data.draw(KINDS[kind], label=name)
    post(router, route, json.dumps(http_body(route, where, name, value), allow_nan=True).encode())
    assert_unharmed(router, good)


@pytest.mark.parametrize("name", sorted(FMAAS_PARAMS))
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_fmaas_parameter(hostile: tuple[RouterProc, GoodClient], name: str,
                               data: st.DataObject) -> None:
    router, good = hostile
    strategy, setter = FMAAS_PARAMS[name]
    req = pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="hello")])
    req.params.stopping.max_new_tokens = 4
    setter(req, data.draw(strategy, label=name))
    single = pb.SingleGenerationRequest(request=req.requests[0], params=req.params)
    if req.HasField("adapter_id"):
        single.adapter_id = req.adapter_id
    with grpc.insecure_channel(router.grpc) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for call in (lambda: stub.Generate(req, timeout=120), lambda: list(stub.GenerateStream(single,
                                                                                               timeout=120))):
            try:
                call()
            except grpc.RpcError as exc:
                assert exc.code() in OK_CODES, (exc.code(), exc.details())
                assert exc.details(), "an error without a message"
    assert_unharmed(router, good)


DEEP = b'{"inputs": "x", "parameters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
PATHOLOGICAL = {
    "deep-array": DEEP,
    "deep-object": b'{"inputs": "x", "p": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    "deep-unclosed": b"[" * 500_000,
    "deep-in-messages": b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "huge-number": b'{"inputs": "x", "parameters": {"max_new_tokens": 1' + b"0" * 5000 + b"}}",
    "invalid-utf8": b'{"inputs": "\xff\xfe"}',
    "nan-literal": b'{"inputs": "x", "parameters": {"temperature": NaN, "do_sample": true}}',
    "not-an-object": b"[1, 2, 3]",
    "empty": b"",
    "over-the-size-limit": b'{"inputs": "' + b"x" * (3 << 20) + b'"}',
}


@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions",
                                   "/tokenize"])
@pytest.mark.parametrize("body", sorted(PATHOLOGICAL))
def test_pathological_bodies_get_4xx_json(hostile: tuple[RouterProc, GoodClient], route: str,
                                          body: str) -> None:
    router, good = hostile
    resp = requests.post(router.http + route, data=PATHOLOGICAL[body], timeout=120,
                         headers={"Content-Type": "application/json"})
    if route == "/tokenize" and body == "nan-literal":  # no sampling parameters there: tokenized
        assert resp.status_code == 200, resp.text[:300]
    else:
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
        assert is_error_body(resp.json()), resp.text[:300]
    assert_unharmed(router, good)


def test_a_refused_10000_request_batch_holds_nothing(hostile: tuple[RouterProc, GoodClient]) -> None:
    """Too large for --max-client-batch-size: refused before anything is admitted. A batch within the
    limit but beyond the free concurrency slots is refused whole too. Either way no slot, KV block or
    adapter reference stays held, and the next request is admitted at once."""
    router, good = hostile
    req = pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text=f"r{i}") for i in range(10_000)],
                                      params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=64)),
                                      adapter_id="a01")
    within = pb.BatchedGenerationRequest(requests=list(req.requests)[:64], params=req.params,
                                         adapter_id="a01")
    with grpc.insecure_channel(router.grpc) as channel, good.paused():
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(req, timeout=120)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 64" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(within, timeout=120)  # 64 > the 32 concurrency slots: all or nothing
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_for(lambda: metric(router, "chameleon_requests_in_flight") == 0, "every slot free")
        state = integrity(read_metrics(router.http + "/metrics"))
        assert state["ok"], state
        assert golden_grpc_text(channel) == good.text  # admitted at once, not refused
    assert_unharmed(router, good)


def test_after_the_hostile_inputs_nothing_is_held(hostile: tuple[RouterProc, GoodClient]) -> None:
    router, good = hostile
    assert good.answers > 0
    assert_unharmed(router, good)
