"""`chameleon bench` and `chameleon bench-compare` against real launched systems on the tiny model: a
few seconds of load; every planned request is accounted for, the JSON carries its keys, and the profile
measured on the live system loads in the simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chameleon.sim.profile import Profile
from chameleon.tools.bench import system
from chameleon.tools.bench.cli import main as bench_main
from chameleon.tools.bench.compare import main as compare_main
from chameleon.tools.bench.loadgen import server_info
from chameleon.tools.bench.ramp import ramp, ramp_steps, unit_time, warp
from chameleon.tools.bench.workload import BenchOptions, plan, population
from chameleon.workload import read_trace

pytestmark = pytest.mark.slow
LAUNCH = ("--memory-budget", str(128 << 20), "--max-batch-prefill-tokens", "256",
          "--shard-args", "--threads 1")


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Azure-format trace (lengths scaled down by the bench's default 1/16)."""
    path = tmp_path_factory.mktemp("bench-trace") / "trace.csv"
    rows = [f"2023-11-16 18:15:{i // 10:02d}.{i % 10}000000,{200 + 53 * (i % 9)},{40 + 29 * (i % 5)}"
            for i in range(200)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def served(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[system.System]:
    spec = system.SystemSpec(tiny_assets / "model", tiny_assets / "adapters", LAUNCH, startup_timeout_s=150)
    sysm = system.start(spec, "chameleon", "chameleon", tmp_path_factory.mktemp("bench-log") / "launch.log")
    yield sysm
    sysm.stop()


def test_bench_accounts_for_every_request(served: system.System, trace: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--target", served.target, "--metrics-url", served.metrics_url, "--trace", str(trace),
            "--adapters", "8", "--rate", "4", "--duration", "3", "--slo-s", "5", "--json", str(out)]
    assert bench_main(argv) == 0
    assert "TTFT  P50" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    info = asyncio.run(server_info(served.target))
    pop = population([(a, r) for a, r, _ in info.adapters], 8)
    planned = plan(read_trace(trace), pop, BenchOptions(rate=4.0, duration_s=3.0), info.max_total_tokens,
                   info.max_new_tokens)
    reqs = doc["requests"]
    assert sorted(r["id"] for r in reqs) == sorted(w.id for w in planned)
    s = doc["summary"]
    for key in ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "throughput_rps",
                "slo_attainment", "errors", "cache_hit_rate", "e2e_mean_s"):
        assert key in s
    assert s["requests"] == len(planned) == s["completed"] + s["errors"]
    assert s["errors"] == 0, [r["error"] for r in reqs if r["error"]]
    for r in reqs:
        assert r["prompt_tokens"] == r["input_tokens"]
        assert 1 <= r["generated_tokens"] <= r["output_tokens"]
        assert len(r["gaps_s"]) == r["generated_tokens"] - 1
        assert 0 < r["ttft_s"] <= r["e2e_s"]
    assert s["cache_hit_rate"] is not None


def test_the_ramp_probe_sends_every_step_and_reports_what_it_sustained(served: system.System,
                                                                      trace: Path) -> None:
    info = asyncio.run(server_info(served.target))
    pop = population([(a, r) for a, r, _ in info.adapters], 8)
    steps = ramp_steps(2.0, 2.0, 1.0, 2.0, max_s=3.0)             # 2 rps for 2 s, then 4 rps for 1 s
    items = warp(plan(read_trace(trace), pop, BenchOptions(rate=1.0, duration_s=unit_time(steps)),
                      info.max_total_tokens, info.max_new_tokens), steps)
    res = asyncio.run(ramp(served.target, items, steps, limit_s=60.0))
    assert [s["rate"] for s in res.steps] == [2.0, 4.0]
    assert sum(s["requests"] for s in res.steps) == len(items)
    # a generous limit on the tiny model: no step fails, every request completes
    assert res.crossed_rps is None and res.sustained_rps == 4.0 and res.limit_s == 60.0
    assert all(s["late"] == 0 and s["completed"] == s["requests"] for s in res.steps)


def test_compare_writes_summary_runs_and_a_loadable_profile(tiny_assets: Path, trace: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.json"
    argv = ["--model-id", str(tiny_assets / "model"), "--adapter-dir", str(tiny_assets / "adapters"),
            "--trace", str(trace), "--adapters", "8", "--configs", "chameleon/chameleon", "--rates", "2,4",
            "--duration", "2", "--warmup", "1", "--json", str(out), "--log-dir", str(tmp_path),
            "--steady-requests", "200",
            "--full-sweep", "--launch-args", " ".join(LAUNCH[:4]) + " --shard-args '--threads 1'"]
    assert compare_main(argv) == 0
    printed = capsys.readouterr().out
    assert "simulator (profile measured on this system) vs measurement" in printed
    doc = json.loads(out.read_text())
    s = doc["summary"]["chameleon/chameleon"]
    for key in ("slo_throughput_rps", "ttft_p99_s_at_high_load", "ttft_p50_s_at_high_load", "cache_hit_rate"):
        assert key in s
    assert [r["rate"] for r in doc["runs"]] == [2.0, 4.0]
    assert all(r["requests"] == r["completed"] + r["errors"] for r in doc["runs"])
    assert all("loadavg_1m_before" in r and "loadavg_1m_after" in r for r in doc["runs"])
    assert "loadavg_1m_start" in doc["meta"] and doc["meta"]["skipped_rates"] == {}
    assert len(doc["predictions"]) == 2 and doc["meta"]["high_load_rps"] in (2.0, 4.0)
    steady = doc["steady_state"]
    assert [r["config"] for r in steady] == ["chameleon/chameleon"] and steady[0]["ttft_p99_s"] > 0
    assert "simulator steady state at the high load" in printed
    prof = Profile.load(out.with_suffix(".profile.json"))
    assert prof.compute_s_per_token > 0 and prof.h2d_bytes_per_s > 0 and len(prof.adapter_bytes) == 4
    from chameleon.tools.simulate import main as simulate_main

    assert simulate_main(["--trace", str(trace), "--profile", str(out.with_suffix(".profile.json")),
                          "--rates", "2", "--policies", "fifo", "--slo-s", "5", "--workers", "1",
                          "--no-progress"]) == 0
