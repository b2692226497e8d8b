"""`chameleon soak`: its bookkeeping (loss classification, memory verdict, allocator integrity from
/metrics) and one short end-to-end run on the tiny assets with a shard kill midway. The real soak
(minutes) is the command itself, not part of `make test`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from chameleon.tools.bench.loadgen import CANCELLED
from chameleon.tools.bench.soak import Timeline, format_report, main, outcomes, verdict
from chameleon.tools.bench.soak_watch import ProcMemory, integrity
from chameleon.tools.bench.stats import RequestRecord

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"


def _rec(i: int, sent: float, *, admitted: bool, error: str | None) -> RequestRecord:
    rec = RequestRecord(i, None, 10, 4, sent, sent_s=sent, prompt_tokens=10 if admitted else 0, error=error)
    rec.ttft_s = None if error else 0.01
    return rec


def test_losses_are_split_into_in_flight_at_the_kill_and_otherwise():
    tl = Timeline(kill_s=10.0, killed_pids=[1], unhealthy_s=10.4, healthy_again_s=20.0)
    recs = [_rec(0, 1.0, admitted=True, error=None),
            _rec(1, 9.9, admitted=True, error="INTERNAL"),        # running when the shard died
            _rec(2, 12.0, admitted=False, error="UNAVAILABLE"),    # refused while recovering
            _rec(3, 2.0, admitted=False, error="RESOURCE_EXHAUSTED"),
            _rec(4, 30.0, admitted=True, error="INTERNAL")]       # lost long after recovery: a real loss
    out = outcomes(recs, tl)
    assert out["sent"] == 5 and out["succeeded"] == 1 and out["refused"] == 2
    assert out["failed"] == {"INTERNAL": 2, "UNAVAILABLE": 1, "RESOURCE_EXHAUSTED": 1}
    assert out["admitted_lost"] == 2 and out["lost_in_flight_at_kill"] == 1 and out["lost_otherwise"] == 1


def test_overload_is_reported_apart_from_loss():
    """Requests the soak cancelled itself at its drain limit, and refused ones, are overload, not loss:
    an overloaded run with no real loss passes, and says it was overloaded."""
    tl = Timeline(kill_s=10.0, killed_pids=[1], unhealthy_s=10.4, healthy_again_s=20.0)
    recs = [_rec(0, 1.0, admitted=True, error=None),
            _rec(1, 40.0, admitted=True, error=CANCELLED),         # running at the drain limit
            _rec(2, 41.0, admitted=False, error=CANCELLED),        # still queued at the drain limit
            _rec(3, 42.0, admitted=False, error="RESOURCE_EXHAUSTED")]
    out = outcomes(recs, tl)
    assert out["admitted_lost"] == 0 and out["lost_otherwise"] == 0
    assert out["refused"] == 1 and out["cancelled_at_drain"] == 2 and out["cancelled_at_drain_admitted"] == 1
    report = {"minutes": 1.0, "rate": 9.0, "adapters": 2, "timeline": {"kill_s": 10.0, "killed_pids": [1],
              "unhealthy_s": 10.4, "healthy_again_s": 20.0}, "requests": out, "memory": [],
              "integrity": {"ok": True, "checks": {}}, "served_at_end": True}
    report["verdict"] = verdict(report)
    assert report["verdict"]["pass"] and report["verdict"]["overloaded"]
    text = format_report(report)
    assert "overload (not loss): refused at submission 1, cancelled at the" in text
    assert "loss: admitted but lost 0" in text and "OVERLOADED" in text
    lossy = {**out, "admitted_lost": 1, "lost_otherwise": 1}
    assert not verdict({**report, "requests": lossy})["pass"]
    calm = {**out, "refused": 0, "cancelled_at_drain": 0}
    assert not verdict({**report, "requests": calm})["overloaded"]


def test_memory_verdict_compares_the_end_with_the_settled_sample():
    steady = ProcMemory(1, "router", [(0.0, 50), (10.0, 100), (15.0, 104), (20.0, 102), (30.0, 108)])
    assert steady.settled() == 104 and steady.summary(0.10)["ok"]  # the first half's highest
    leaking = ProcMemory(2, "router", [(0.0, 50), (10.0, 100), (20.0, 130), (30.0, 160)])
    summary = leaking.summary(0.10)
    assert not summary["ok"] and math.isclose(summary["growth_vs_settled"], 0.6)


def test_integrity_from_metrics():
    good = {"chameleon_requests_in_flight": 0, 'chameleon_pool_pages{tenant="kv"}': 0,
            'chameleon_pool_pages{tenant="adapter"}': 12, 'chameleon_adapter_resident_pages{adapter="a"}': 4,
            'chameleon_adapter_resident_pages{adapter="b"}': 8, "chameleon_cache_idle_pages": 12,
            'chameleon_shard_kv_pages_used{rank="0"}': 1, 'chameleon_shard_adapter_pages_used{rank="0"}': 12,
            "tgi_batch_current_size": 0}
    assert integrity(good)["ok"]
    for key, bad in (("chameleon_cache_idle_pages", 8), ('chameleon_shard_kv_pages_used{rank="0"}', 5),
                     ('chameleon_shard_adapter_pages_used{rank="0"}', 4),
                     ('chameleon_pool_pages{tenant="kv"}', 3)):
        assert not integrity({**good, key: bad})["ok"], key


@pytest.mark.slow
@pytest.mark.skipif(not TRACE.is_file(), reason="the shared Azure trace is not checked out next to the repo")
def test_short_soak_with_a_shard_kill(tiny_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "soak.json"
    code = main(["--minutes", "0.4", "--rate", "3", "--trace", str(TRACE),
                 "--model-id", str(tiny_assets / "model"), "--adapter-dir", str(tiny_assets / "adapters"),
                 "--launch-args", "--memory-budget 100000000 --max-batch-prefill-tokens 256",
                 "--sample-every", "2", "--memory-tolerance", "100",  # too short to judge memory
                 "--log", str(tmp_path / "launch.log"), "--json", str(out)])
    report = json.loads(out.read_text())
    assert "verdict:" in capsys.readouterr().out
    req, tl = report["requests"], report["timeline"]
    assert tl["killed_pids"] and tl["healthy_again_s"] is not None
    assert req["sent"] == report["requests_planned"] and req["succeeded"] > 0
    assert req["lost_otherwise"] == 0, req
    # only the kill's victims, and on a busy machine requests the soak cancelled at its drain limit
    # (overload, reported apart from loss)
    assert set(req["failed"]) <= {"INTERNAL", "UNAVAILABLE", CANCELLED}, req
    assert report["integrity"]["ok"], report["integrity"]
    assert {p["role"] for p in report["memory"]} >= {"launcher", "router", "shard-0"}
    assert code == 0


@pytest.mark.slow
def test_co_tenant_soak_that_cannot_start_says_why(tiny_assets: Path, tmp_path: Path, capsys) -> None:
    """A system that cannot start (here: a budget too small for the model) is a message naming the
    launch flag to change and exit code 2, not a traceback."""
    rc = main(["--co-tenant", "--co-tenant-pressure", "host", "--minutes", "0.1",
               "--model-id", str(tiny_assets / "model"), "--adapter-dir", str(tiny_assets / "adapters"),
               "--log", str(tmp_path / "launch.log"), "--launch-args", "--memory-budget 1000"])
    out = capsys.readouterr().out
    assert rc == 2, out
    assert "chameleon soak --co-tenant:" in out and "--memory-budget" in out and "Traceback" not in out
