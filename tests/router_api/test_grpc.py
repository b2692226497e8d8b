"""gRPC over a fake engine: fmaas message sequence and fields, cancellation, time limits, AdapterAdmin,
health checking and reflection on the same port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from chameleon_pb import chameleon_pb2 as cpb
from chameleon_pb import chameleon_pb2_grpc as cpb_grpc
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.router_api.fakes import ServedRouter


def _channel(router: ServedRouter) -> grpc.Channel:
    return grpc.insecure_channel(router.grpc)


def _params(max_new: int = 3, **response: Any) -> pb.Parameters:
    return pb.Parameters(
        stopping=pb.StoppingCriteria(max_new_tokens=max_new), response=pb.ResponseOptions(**response)
    )


def _wait(cond: Any) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def test_generate_stream_message_sequence(router: ServedRouter):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    req = pb.SingleGenerationRequest(
        adapter_id="alpha",
        request=pb.GenerationRequest(text="hello"),
        params=_params(3, generated_tokens=True, token_logprobs=True),
    )
    msgs = list(stub.GenerateStream(req, metadata=[("x-correlation-id", "req-42")]))
    n_in = len(router.engine.requests[0].input_ids)
    assert msgs[0] == pb.GenerationResponse(input_token_count=n_in)
    assert [m.text for m in msgs[1:4]] == [" t0", " t1", " t2"]
    assert [m.generated_token_count for m in msgs[1:4]] == [1, 2, 3]
    assert msgs[1].tokens[0].text == " t0" and msgs[1].tokens[0].logprob == pytest.approx(-0.5)
    last = msgs[-1]
    assert (last.stop_reason, last.generated_token_count, last.input_token_count) == (pb.MAX_TOKENS, 3, n_in)
    req_seen = router.engine.requests[0]
    assert (req_seen.adapter_id, req_seen.correlation_id) == ("alpha", "req-42")


def test_prefix_id_is_an_alias_of_adapter_id(router: ServedRouter):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    stub.Generate(
        pb.BatchedGenerationRequest(
            prefix_id="beta", requests=[pb.GenerationRequest(text="x")], params=_params(1)
        )
    )
    assert router.engine.requests[0].adapter_id == "beta"


def test_generate_batched_with_options(router: ServedRouter):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    params = _params(2, input_text=True, input_tokens=True, generated_tokens=True, token_ranks=True)
    params.method = pb.SAMPLE
    params.sampling.seed = 11
    params.sampling.top_k = 5
    params.stopping.stop_sequences.append(" t1")
    out = stub.Generate(
        pb.BatchedGenerationRequest(
            requests=[pb.GenerationRequest(text="hello"), pb.GenerationRequest(text="hi")], params=params
        )
    )
    assert [r.text for r in out.responses] == ["hello t0 t1", "hi t0 t1"]
    first = out.responses[0]
    assert (first.seed, first.generated_token_count) == (11, 2)
    assert [t.rank for t in first.tokens] == [1, 1]  # the fake's chosen token heads its top tokens
    assert len(first.input_tokens) == first.input_token_count
    p = router.engine.requests[0].params
    assert (p.do_sample, p.seed, p.top_k, p.prefill_logprobs) == (True, 11, 5, True)


def test_greedy_ignores_sampling_and_zero_means_default(router: ServedRouter):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    params = pb.Parameters(sampling=pb.SamplingParameters(temperature=5.0, top_p=3.0))  # GREEDY: ignored
    stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="x")], params=params))
    p = router.engine.requests[0].params
    assert (p.do_sample, p.temperature, p.top_p) == (False, 1.0, 1.0)
    n_in = len(router.engine.requests[0].input_ids)
    assert p.max_new_tokens == min(100, 96 - n_in)  # 0 = the server default, capped by max_total_tokens


def test_time_limit_stops_with_time_limit(router: ServedRouter):
    router.engine.script.step_s = 0.05
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    params = _params(60)
    params.stopping.time_limit_millis = 100
    msgs = list(
        stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="x"), params=params))
    )
    assert msgs[-1].stop_reason == pb.TIME_LIMIT
    assert msgs[-1].generated_token_count < 60
    _wait(lambda: len(router.engine.cancelled) == 1)
    out = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="x")], params=params))
    resp = out.responses[0]
    assert resp.stop_reason == pb.TIME_LIMIT
    # as TGIS: what was generated before the limit comes back (the fake's tokens are " t0", " t1", ...)
    assert 0 < resp.generated_token_count < 60
    assert resp.text == "".join(f" t{i}" for i in range(resp.generated_token_count))
    _wait(lambda: len(router.engine.cancelled) == 2)


def test_tgis_min_new_tokens_and_length_penalty_reach_the_engine(router: ServedRouter):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    params = _params(5)
    params.stopping.min_new_tokens = 4
    params.decoding.length_penalty.start_index = 2
    params.decoding.length_penalty.decay_factor = 1.25
    out = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="x")], params=params))
    assert out.responses[0].generated_token_count == 5
    p = router.engine.requests[0].params
    assert (p.min_new_tokens, p.length_penalty, p.max_new_tokens) == (4, (2, 1.25), 5)
    params.decoding.length_penalty.decay_factor = 1.0  # 1.0 = off, as TGIS
    one = pb.SingleGenerationRequest(request=pb.GenerationRequest(text="x"), params=params)
    list(stub.GenerateStream(one))
    assert router.engine.requests[1].params.length_penalty is None


def test_stream_cancellation_reaches_the_engine(router: ServedRouter):
    hold = asyncio.Event()
    router.engine.script.hold = hold
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    call = stub.GenerateStream(
        pb.SingleGenerationRequest(request=pb.GenerationRequest(text="x"), params=_params(50))
    )
    first = next(call)
    assert first.input_token_count > 0
    _wait(lambda: router.engine.in_flight == 1)
    call.cancel()
    _wait(lambda: len(router.engine.cancelled) == 1)
    router.loop.call_soon_threadsafe(hold.set)
    assert router.engine.finished == [] and router.engine.in_flight == 0


def test_generation_error_is_internal(router: ServedRouter):
    router.engine.script.fail_after = 1
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.GenerateStream(
                pb.SingleGenerationRequest(request=pb.GenerationRequest(text="x"), params=_params(5))
            )
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL and "boom" in info.value.details()


def test_tokenize_and_model_info(router: ServedRouter):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    out = stub.Tokenize(
        pb.BatchedTokenizeRequest(
            requests=[pb.TokenizeRequest(text="hello world")], return_tokens=True, return_offsets=True
        )
    )
    (r,) = out.responses
    assert r.token_count == len(r.tokens) == len(r.offsets) > 0
    assert r.offsets[-1].end == len("hello world")
    cut = stub.Tokenize(
        pb.BatchedTokenizeRequest(requests=[pb.TokenizeRequest(text="hello world")], truncate_input_tokens=1)
    )
    assert cut.responses[0].token_count == 1
    info = stub.ModelInfo(pb.ModelInfoRequest())
    assert (info.model_kind, info.max_sequence_length) == (pb.ModelInfoResponse.DECODER_ONLY, 96)


def test_adapter_admin(router: ServedRouter):
    admin = cpb_grpc.AdapterAdminStub(_channel(router))
    listed = admin.ListAdapters(cpb.ListAdaptersRequest())
    assert [a.adapter_id for a in listed.adapters] == ["alpha", "beta"]
    loaded = admin.LoadAdapter(cpb.LoadAdapterRequest(adapter_id="beta"))
    assert loaded.adapter.resident and loaded.adapter.rank == 8
    assert admin.UnloadAdapter(cpb.OffloadAdapterRequest(adapter_id="beta")).was_resident
    assert not admin.UnloadAdapter(cpb.OffloadAdapterRequest(adapter_id="beta")).was_resident
    for adapter_id, code in (
        ("gamma", grpc.StatusCode.NOT_FOUND),
        ("../beta", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as info:
            admin.LoadAdapter(cpb.LoadAdapterRequest(adapter_id=adapter_id))
        assert info.value.code() == code
    router.engine.admin.busy.add("alpha")
    with pytest.raises(grpc.RpcError) as info:
        admin.UnloadAdapter(cpb.OffloadAdapterRequest(adapter_id="alpha"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_health_follows_the_engine(router: ServedRouter):
    health = health_pb2_grpc.HealthStub(_channel(router))
    check = health_pb2.HealthCheckRequest(service="fmaas.GenerationService")
    assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING
    router.engine.healthy = False
    _wait(lambda: health.Check(check).status == health_pb2.HealthCheckResponse.NOT_SERVING)
    router.engine.healthy = True
    _wait(lambda: health.Check(check).status == health_pb2.HealthCheckResponse.SERVING)


def test_reflection_lists_the_services(router: ServedRouter):
    stub = reflection_pb2_grpc.ServerReflectionStub(_channel(router))
    (resp,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in resp.list_services_response.service}
    assert {"fmaas.GenerationService", "chameleon.v1.AdapterAdmin", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("include", [True, False])
def test_stop_sequence_in_stream_and_batch(router: ServedRouter, include: bool):
    stub = pb_grpc.GenerationServiceStub(_channel(router))
    params = _params(10)
    params.stopping.stop_sequences.append(" t2")
    params.stopping.include_stop_sequence = include
    msgs = list(stub.GenerateStream(pb.SingleGenerationRequest(request=pb.GenerationRequest(text="x"),
                                                               params=params)))
    want = " t0 t1 t2" if include else " t0 t1"
    assert "".join(m.text for m in msgs) == want
    assert (msgs[-1].stop_reason, msgs[-1].stop_sequence, msgs[-1].generated_token_count) == (
        pb.STOP_SEQUENCE, " t2", 3)
    out = stub.Generate(pb.BatchedGenerationRequest(requests=[pb.GenerationRequest(text="x")], params=params))
    assert out.responses[0].text == want
