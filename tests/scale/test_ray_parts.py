"""The Ray Serve pieces that run without a Ray cluster: the adapter of a request, replica statistics
from a router's /metrics, and the request router's ranking over stand-in replicas."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chameleon.scale.bench_http import breakdown
from chameleon.scale.ray_router import AdapterAffinityRequestRouter
from chameleon.scale.ray_serve import adapter_of, is_streaming
from chameleon.scale.replica_stats import CostMeter, routing_stats, view_from_metrics
from router.engine.types import FinalEvent
from router.metrics import RouterMetrics


def test_adapter_of_tgi_and_openai_requests():
    tgi = json.dumps({"inputs": "x", "parameters": {"adapter_id": "a1"}}).encode()
    assert adapter_of("/generate", tgi, ()) == adapter_of("/generate_stream", tgi, ()) == "a1"
    assert adapter_of("/generate", b'{"inputs": "x"}', ()) is None
    chat = json.dumps({"model": "a2", "messages": []}).encode()
    assert adapter_of("/v1/chat/completions", chat, ()) == "a2"
    assert adapter_of("/v1/completions", json.dumps({"model": "base"}).encode(), ("base",)) is None
    for body in (b"not json", b"[1]", b'{"parameters": 3}'):
        assert adapter_of("/generate", body, ()) is None
    assert adapter_of("/info", tgi, ()) is None
    assert is_streaming("/generate_stream", b"") and is_streaming("/v1/completions", b'{"stream": true}')
    assert not is_streaming("/v1/completions", b'{"stream": false}') and not is_streaming("/generate", b"x")


def test_replica_view_from_a_router_metrics_text():
    stats = {
        "requests": {"queued": 4, "running": 2, "running_adapters": ["a"], "waiting_adapters": ["a", "c"],
                     "queued_prompt_tokens": 321},
        "scheduler": {"lengths": [1, 2]},
        "cache": {"kv_pages": 10, "adapter_pages": 6, "resident_adapters": 2},
        "pool": {"num_pages": 100, "by_tenant": {"kv": 10, "adapter": 6}},
        "adapters": {"resident": {"a": 2, "b": 4}},
    }
    text = RouterMetrics(lambda: stats, model_name="m").render().decode()
    view = view_from_metrics("r0", text)
    assert view.resident == {"a", "b"} and view.pending == {"c"}
    assert view.free_pages == 84 and view.running == 2
    assert view.queue_lengths == (1, 3)  # one waiting request not in a queue yet counts in the last
    assert view.queued_tokens == 321
    del stats["requests"]["queued_prompt_tokens"]  # an older router: not reported, not zero
    older = RouterMetrics(lambda: stats, model_name="m").render().decode()
    assert view_from_metrics("r0", older).queued_tokens is None
    out = routing_stats(view, True, 12.5)
    assert out["healthy"] is True and out["ts"] == 12.5 and out["resident"] == ["a", "b"]


@dataclass(frozen=True)
class FakeId:
    unique_id: str


@dataclass
class FakeReplica:
    name: str
    routing_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def replica_id(self) -> FakeId:
        return FakeId(self.name)


@dataclass
class FakeMeta:
    multiplexed_model_id: str
    internal_request_id: str = ""


@dataclass
class FakePending:
    metadata: FakeMeta
    args: tuple[Any, ...] = ()


def make_router() -> AdapterAffinityRequestRouter:
    router = object.__new__(AdapterAffinityRequestRouter)  # no Ray deployment behind it
    router.initialize_state(load_factor=1.25, load_slack=2)
    return router


def test_request_router_prefers_residency_and_puts_sick_replicas_last():
    router = make_router()
    warm = FakeReplica("w", {"resident": ["a"], "free_pages": 0, "queue_lengths": [0], "running": 1,
                             "healthy": True, "ts": 1.0})
    cold = FakeReplica("c", {"free_pages": 50, "queue_lengths": [0], "healthy": True, "ts": 1.0})
    sick = FakeReplica("s", {"resident": ["a"], "healthy": False, "ts": 1.0})
    ranks = asyncio.run(router.choose_replicas([sick, cold, warm], FakePending(FakeMeta("a"))))
    assert [[r.name for r in rank] for rank in ranks] == [["w"], ["c"], ["s"]]


def test_request_router_counts_sent_requests_until_a_new_report():
    router = make_router()
    warm = FakeReplica("w", {"resident": ["a"], "queue_lengths": [0], "healthy": True, "ts": 1.0})
    cold = FakeReplica("c", {"queue_lengths": [0], "healthy": True, "ts": 1.0})
    pending = FakePending(FakeMeta("a"))
    for i in range(4):  # still running: never completed
        sent = FakePending(FakeMeta("a", f"req-{i}"))
        first = asyncio.run(router.choose_replicas([warm, cold], sent))[0][0]
        router.on_request_routed(sent, first.replica_id, None)
    assert first.name == "w"
    # 4 sent to w, none reported yet: mean load (4 + 0 + 1) / 2, bound max(1.25 x 2.5, 2.5 + 2) = 4.5 < 5
    assert asyncio.run(router.choose_replicas([warm, cold], pending))[0][0].name == "c"
    # a report measured after those requests were sent: they are inside it, w is idle again
    warm.routing_stats = {**warm.routing_stats, "ts": time.time() + 1}
    assert asyncio.run(router.choose_replicas([warm, cold], pending))[0][0].name == "w"


def test_completed_requests_stop_counting_as_load_and_keep_their_adapter_warm():
    router = make_router()
    warm = FakeReplica("w", {"queue_lengths": [0], "healthy": True, "ts": 1.0})
    cold = FakeReplica("c", {"queue_lengths": [0], "healthy": True, "ts": 1.0})
    for i in range(8):  # sequential: each finishes before the next is sent, no report in between
        pending = FakePending(FakeMeta("a", f"req-{i}"))
        first = asyncio.run(router.choose_replicas([warm, cold], pending))[0][0]
        router.on_request_routed(pending, first.replica_id, None)
        router.on_request_completed(first.replica_id, f"req-{i}")
        assert first.name == asyncio.run(router.choose_replicas([warm, cold], pending))[0][0].name
    assert router.affinity.view(first.name).load == 0 and "a" in router.affinity.view(first.name).resident


def test_a_failed_deploy_names_the_replica_log_and_its_last_error(tmp_path: Path) -> None:
    from chameleon.scale.ray_cli import last_replica_error

    assert str(tmp_path) in last_replica_error(tmp_path)  # no log yet: where the logs will be
    log = tmp_path / "r1" / "launch.log"
    log.parent.mkdir()
    log.write_text("08:41:18,595 INFO [shard-0] up\n"
                   "08:41:18,596 ERROR [router] chameleon.router: cannot start: not enough memory\n"
                   "08:41:18,866 ERROR [launcher] chameleon.tools.launch: router exited with code 1\n")
    why = last_replica_error(tmp_path)
    assert str(log) in why and "cannot start: not enough memory" in why  # the cause, not the launcher's echo
    log.write_text("08:41:18,866 ERROR [launcher] chameleon.tools.launch: router exited with code 1\n")
    assert "router exited with code 1" in last_replica_error(tmp_path)


def test_cost_meter_follows_recent_increments_and_survives_a_router_restart():
    meter = CostMeter(half_life_s=10.0)
    first = {"tgi_batch_inference_duration_sum/prefill": 2.0, "tgi_request_input_length_sum": 1000.0,
             "tgi_request_input_length_count": 10.0, "chameleon_adapter_load_seconds_total": 0.5,
             "chameleon_adapter_loads_total": 5.0}
    assert meter.update(first, ts=0.0) == pytest.approx(
        {"prefill_s_per_token": 0.002, "tokens_per_request": 100.0, "load_s": 0.1})
    # one half-life later prefill got twice as fast; no load since: the last load cost is kept
    second = {**first, "tgi_batch_inference_duration_sum/prefill": 3.0,
              "tgi_request_input_length_sum": 2000.0, "tgi_request_input_length_count": 20.0}
    costs = meter.update(second, ts=10.0)
    assert costs["prefill_s_per_token"] == pytest.approx((1.0 + 1.0) / (500 + 1000))
    assert costs["load_s"] == pytest.approx(0.1) and costs["tokens_per_request"] == pytest.approx(100.0)
    # the router restarted: its counters start from zero again, they count as increments
    restarted = {k: 0.0 for k in first} | {"chameleon_adapter_load_seconds_total": 0.9,
                                           "chameleon_adapter_loads_total": 3.0}
    costs = meter.update(restarted, ts=10.0)
    assert costs["load_s"] == pytest.approx((0.25 + 0.9) / (2.5 + 3.0))


def test_replica_view_carries_the_costs_its_router_measured():
    stats = {"requests": {"queued": 0, "running": 0}, "adapters": {"loads": 4, "load_seconds": 0.2},
             "loop": {"est_step_seconds": 0.03}}
    metrics = RouterMetrics(lambda: stats, model_name="m")
    metrics.observe_batch("prefill", 0.5, 0.4)
    metrics.observe_batch("decode", 9.0, 9.0)  # decode steps are not prefill time
    for _ in range(2):
        metrics.request_succeeded(FinalEvent("x", 3, "length", None, 250, 0.1, 0.5), 0.6)
    view = view_from_metrics("r0", metrics.render().decode(), CostMeter(), ts=1.0)
    assert view.prefill_s_per_token == pytest.approx(0.5 / 500) and view.tokens_per_request == 250
    assert view.load_s == pytest.approx(0.05) and view.step_s == pytest.approx(0.03) and view.costed
    assert not view_from_metrics("r0", metrics.render().decode()).costed  # no meter: no costs
    assert routing_stats(view, True, 1.0)["load_s"] == pytest.approx(0.05)


def test_request_router_spills_a_deep_queue_when_costs_are_reported():
    costs = {"prefill_s_per_token": 0.001, "tokens_per_request": 100, "load_s": 0.05, "step_s": 0.02,
             "healthy": True, "ts": 1.0}
    warm = FakeReplica("w", {**costs, "resident": ["a"], "queue_lengths": [3], "running": 1})
    cold = FakeReplica("c", {**costs, "queue_lengths": [0]})
    router = object.__new__(AdapterAffinityRequestRouter)
    router.initialize_state(load_factor=1.25, load_slack=10, miss_weight=2.0)
    first = asyncio.run(router.choose_replicas([warm, cold], FakePending(FakeMeta("a"))))[0][0]
    assert first.name == "c"  # 3 requests queued at w cost more than 2 x a 50 ms load at c
    router.initialize_state(load_factor=1.25, load_slack=10, miss_weight=0.0)
    assert asyncio.run(router.choose_replicas([warm, cold], FakePending(FakeMeta("a"))))[0][0].name == "w"


def test_bench_breakdown_per_replica():
    keys = ("chameleon_adapter_loads_total", "chameleon_adapter_load_seconds_total",
            "tgi_request_queue_duration_sum", "tgi_request_queue_duration_count",
            "tgi_request_input_length_sum", "tgi_batch_inference_duration_sum/prefill",
            "tgi_batch_inference_duration_sum/decode")
    before = {"r0": dict.fromkeys(keys, 1.0)}
    after = {"r0": dict(zip(keys, (5.0, 1.4, 3.0, 5.0, 401.0, 3.0, 7.0), strict=True)),
             "r1": dict.fromkeys(keys, 0.0)}
    out = breakdown(before, after, {"r0": 4})
    assert out["r0"] == pytest.approx({"requests": 4.0, "routed": 4.0, "loads": 4.0, "load_s_mean": 0.1,
                                       "load_s_total": 0.4, "queue_s_mean": 0.5, "prefill_s_total": 2.0,
                                       "prefill_s_per_token": 0.005, "decode_s_total": 6.0})
    assert out["r1"]["load_s_mean"] is None and out["r1"]["routed"] == 0.0


def test_bench_replay_records_the_replica_that_answered():
    from aiohttp import web

    from chameleon.scale.bench_http import REPLICA_HEADER, replay
    from chameleon.tools.launch.plan import free_port
    from chameleon.workload import WorkItem

    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = web.StreamResponse(headers={REPLICA_HEADER: f"rep-{body['parameters']['adapter_id']}"})
        await reply.prepare(request)
        await reply.write(b'data: {"token": {"id": 1, "text": "x"}, "details": {"finish_reason": "length"}}'
                          b"\n\n")
        return reply

    async def main() -> tuple[list, dict[int, str]]:
        app = web.Application()
        app.router.add_post("/generate_stream", stream)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        items = [WorkItem(i, 0.01 * i, f"a{i}", 4, 1) for i in range(3)]
        where: dict[int, str] = {}
        try:
            records = await replay(f"http://127.0.0.1:{port}", items, 0, 10.0, where)
        finally:
            await runner.cleanup()
        return records, where

    records, where = asyncio.run(main())
    assert [r.ttft_s is not None for r in records] == [True] * 3
    assert where == {0: "rep-a0", 1: "rep-a1", 2: "rep-a2"}


def test_ray_pairs_summary_ratios_medians_and_pooled(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import runpy

    def run(loads: float, p99: float, ttfts: list[float]) -> dict[str, Any]:
        summary = {"requests": len(ttfts), "errors": 0, "cache_hit_rate": 0.5,
                   "adapter_loads_per_request": loads, "ttft_p50_s": 0.1, "ttft_p90_s": 0.2,
                   "ttft_p99_s": p99, "throughput_rps": 2.0,
                   "per_replica": {"r0": {"requests": len(ttfts), "load_s_mean": 0.05, "queue_s_mean": 0.1,
                                          "prefill_s_per_token": 0.004}}}
        return {"summary": summary, "requests": [{"ttft_s": t} for t in ttfts]}

    for seed, (d99, a99) in enumerate([(1.0, 0.5), (2.0, 3.0), (1.0, 0.9)]):
        (tmp_path / f"s{seed}-default.json").write_text(json.dumps(run(0.6, d99, [d99] * 3)))
        (tmp_path / f"s{seed}-affinity.json").write_text(json.dumps(run(0.2, a99, [a99] * 3)))
    (tmp_path / "s9-default.json").write_text(json.dumps(run(0.6, 9.0, [9.0])))  # no partner: not a pair
    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "ray_pairs_summary.py"))["main"]
    assert main(tmp_path) == 0
    out = capsys.readouterr().out
    assert "median loads fewer: 3.00 (range 3.00-3.00, 3 pairs)" in out
    assert "median P99: 0.90 (range 0.50-1.50, 3 pairs)" in out
    assert "pooled default: 9 requests" in out and "pooled affinity: 9 requests" in out


def test_serve_ray_refuses_a_bad_affinity_setting(capsys: pytest.CaptureFixture[str]):
    from chameleon.scale.ray_cli import main as serve_ray_main

    with pytest.raises(SystemExit) as info:
        serve_ray_main(["--miss-weight", "-1"])
    assert info.value.code == 2 and "miss_weight >= 0" in capsys.readouterr().err


def test_request_router_weighs_the_prompt_against_the_tokens_queued_at_each_replica():
    costs = {"prefill_s_per_token": 0.001, "tokens_per_request": 50, "load_s": 0.01, "step_s": 0.02,
             "healthy": True, "ts": 1.0}
    # the same adapter resident on both, one request waiting on each: a long one at x, a short one at y
    x = FakeReplica("x", {**costs, "resident": ["a"], "queue_lengths": [1], "queued_tokens": 800})
    y = FakeReplica("y", {**costs, "resident": ["a"], "queue_lengths": [1], "queued_tokens": 20})
    router = make_router()

    def send(i: int, text: str) -> str:
        body = json.dumps({"inputs": text, "parameters": {"adapter_id": "a"}}).encode()
        pending = FakePending(FakeMeta("a", f"req-{i}"), ("POST", "/generate", {}, body))
        first = asyncio.run(router.choose_replicas([x, y], pending))[0][0]
        router.on_request_routed(pending, first.replica_id, None)
        return first.name

    assert send(0, "w " * 100) == "y"  # 20 queued tokens beat 800
    assert router.affinity.view("y").queued_tokens == pytest.approx(20 + 50)  # 1st prompt = the mean
    # a prompt twice the mean length counts twice the replicas' mean prompt (50 tokens) once sent
    send(1, "w " * 200)
    assert router.affinity.view("y").queued_tokens == pytest.approx(20 + 50 + 2 * 50, rel=0.05)
    assert not router.tokens  # estimates are dropped once routed
