"""Hypothesis fuzz over the fmaas gRPC API of a real router (tiny shard): random messages (wild numbers,
NaN and negative floats, unknown enum values, thousands of stop sequences, huge prompts, path-like adapter
ids) and raw malformed bytes (corrupt wire format, invalid UTF-8, unknown fields). Each case ends with OK
or a clear status (never UNKNOWN or INTERNAL), the router stays up, and the reference request after it
still gets exactly the same text."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from chameleon_pb import generation_pb2 as pb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.procs import RouterProc
from tests.reliability.system import BUSY_S, Shard, golden_grpc_text, golden_request, metric, router_on
from tests.router_api.real import wait_for

pytestmark = pytest.mark.slow

CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
METHODS = ("Generate", "GenerateStream", "Tokenize", "ModelInfo")


@pytest.fixture(scope="module")
def fuzz_grpc(shard: Shard) -> Iterator[tuple[RouterProc, grpc.Channel, str]]:
    with router_on(shard, "fuzz-grpc", "--max-new-tokens-default", "16", "--max-concurrent-requests", "8") \
            as router, grpc.insecure_channel(router.grpc) as channel:
        yield router, channel, golden_grpc_text(channel)


texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=100)
u32 = st.one_of(st.integers(0, 24), st.integers(0, 2**32 - 1))
f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
adapters = st.one_of(st.none(), texts,
                     st.sampled_from(["a00", "a02", "../a00", "/etc/passwd", "..", "", "x/y"]))


@st.composite
def params(draw: st.DrawFn) -> pb.Parameters:
    p = pb.Parameters(method=draw(st.integers(0, 7)), truncate_input_tokens=draw(u32))
    if draw(st.booleans()):
        s = p.sampling
        s.top_k, s.top_p, s.typical_p = draw(u32), draw(f32), draw(f32)
        if draw(st.booleans()):
            s.temperature = draw(f32)
        if draw(st.booleans()):
            s.seed = draw(st.integers(0, 2**64 - 1))
    stop = p.stopping
    stop.max_new_tokens, stop.min_new_tokens = draw(st.integers(0, 24)), draw(st.sampled_from([0, 0, 5]))
    stop.time_limit_millis = draw(st.sampled_from([0, 0, 1, 50, 2**32 - 1]))
    stop.stop_sequences.extend(draw(st.lists(texts, max_size=6)))
    if draw(st.booleans()):
        stop.include_stop_sequence = draw(st.booleans())
    r = p.response
    flags = draw(st.lists(st.booleans(), min_size=5, max_size=5))
    r.input_text, r.generated_tokens, r.input_tokens, r.token_logprobs, r.token_ranks = flags
    r.top_n_tokens = draw(u32)
    if draw(st.booleans()):
        p.decoding.repetition_penalty = draw(f32)
    if draw(st.booleans()):
        lp = p.decoding.length_penalty
        lp.start_index, lp.decay_factor = draw(u32), draw(st.one_of(st.sampled_from([1.0, 1.5, 10.0]), f32))
    return p


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """(method, serialized request): a random message, or raw/mangled bytes."""
    method = draw(st.sampled_from(METHODS))
    adapter = draw(adapters)
    if method == "Generate":
        msg = pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text=t) for t in
                                                    draw(st.lists(texts, max_size=3))], params=draw(params()))
    elif method == "GenerateStream":
        msg = pb.SingleGenerationRequest(request=pb.GenerationRequest(text=draw(texts)),
                                         params=draw(params()))
    elif method == "Tokenize":
        msg = pb.BatchedTokenizeRequest(requests=[pb.TokenizeRequest(text=t) for t in draw(st.lists(texts,
                                        max_size=3))], return_tokens=draw(st.booleans()),
                                        return_offsets=draw(st.booleans()), truncate_input_tokens=draw(u32))
    else:
        msg = pb.ModelInfoRequest(model_id=draw(texts))
    if adapter is not None and method != "ModelInfo":
        msg.adapter_id = adapter
    raw = msg.SerializeToString()
    mangle = draw(st.sampled_from(["none", "none", "truncate", "garbage", "unknown_field"]))
    if mangle == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mangle == "garbage":
        raw = draw(st.binary(max_size=48))
    elif mangle == "unknown_field":
        raw += b"\xa0\x06\x01" + b"\xaa\x06\x03abc"  # fields 100 (varint) and 101 (bytes)
    return method, raw


def call(channel: grpc.Channel, method: str, raw: bytes) -> grpc.StatusCode:
    path = f"/fmaas.GenerationService/{method}"
    try:
        if method == "GenerateStream":
            for _ in channel.unary_stream(path)(raw, timeout=60):
                pass
        else:
            channel.unary_unary(path)(raw, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR, (exc.code(), exc.details())
        assert exc.details(), "an error without a message"
        return exc.code()
    return grpc.StatusCode.OK


def _invalid_utf8_text() -> bytes:
    inner = b"\x12\x04ab\xff\xfe"  # GenerationRequest.text (field 2) with invalid UTF-8
    return b"\x1a" + bytes([len(inner)]) + inner  # BatchedGenerationRequest.requests (field 3)


def _many_stops() -> bytes:
    req = golden_request()
    req.params.stopping.stop_sequences.extend(f"s{i}" for i in range(3000))
    return req.SerializeToString()


def _huge_prompt() -> bytes:
    return pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="many words " * 100_000)]) \
        .SerializeToString()


def _nan_sampling() -> bytes:
    p = pb.Parameters(method=pb.SAMPLE)
    p.sampling.temperature, p.sampling.top_p = float("nan"), float("-inf")
    return pb.SingleGenerationRequest(request=pb.GenerationRequest(text="x"), params=p).SerializeToString()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=messages())
@example(case=("Generate", _invalid_utf8_text()))
@example(case=("Generate", _many_stops()))
@example(case=("Generate", _huge_prompt()))  # 1.1 MB: refused (too many tokens)
@example(case=("Generate", _huge_prompt() * 2))  # over --max-request-bytes: RESOURCE_EXHAUSTED
@example(case=("GenerateStream", _nan_sampling()))
@example(case=("Generate", b"\xff\xff\xff\xff"))
def test_grpc_fuzz_keeps_serving_the_same_text(fuzz_grpc: tuple[RouterProc, grpc.Channel, str],
                                               case: tuple[str, bytes]) -> None:
    router, channel, golden = fuzz_grpc
    call(channel, *case)
    router.check_alive("router")
    assert golden_grpc_text(channel) == golden


def test_after_the_fuzz_nothing_leaks(fuzz_grpc: tuple[RouterProc, grpc.Channel, str]) -> None:
    router = fuzz_grpc[0]
    wait_for(lambda: metric(router, "chameleon_requests_in_flight") == 0, "every request released", BUSY_S)
    assert metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0
