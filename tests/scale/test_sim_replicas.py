"""The multi-replica simulator (chameleon/sim/replicas.py) and `chameleon simulate-replicas`."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from chameleon.core.affinity import AffinityConfig
from chameleon.sim.config import SimConfig
from chameleon.sim.engine import Simulator
from chameleon.sim.paper_a40 import build
from chameleon.sim.profile import Profile
from chameleon.sim.replica_runner import ReplicaSpec, run_replicas
from chameleon.sim.replicas import ReplicaDriver, ReplicaSim
from chameleon.tools.cli import main as chameleon_main
from chameleon.workload import TraceRecord, WorkloadOptions, build_workload, make_population


@pytest.fixture(scope="module")
def a40() -> Profile:
    return build()


def records(n: int, seed: int = 0) -> tuple[TraceRecord, ...]:
    rng = random.Random(seed)
    return tuple(TraceRecord(0.1 * i, rng.randint(20, 400), rng.randint(5, 80)) for i in range(n))


def test_one_replica_is_the_single_engine_simulator(a40: Profile):
    pop = make_population(20)
    items = build_workload(records(400), pop, WorkloadOptions(rate=6.0, seed=1))
    config = SimConfig(scheduler="chameleon", cache="chameleon")
    alone = Simulator(items, pop, a40, config).run()
    sim = ReplicaSim("r0", pop, a40, config)
    (res,) = ReplicaDriver([sim], "pow2").run(items)
    by_global = {w.id: res.ttft[i] for i, w in enumerate(sim.served)}
    assert [by_global[w.id] for w in items] == [alone.ttft[w.id] for w in items]
    assert (res.finished, res.loads, res.prefetches) == (alone.finished, alone.loads, alone.prefetches)
    assert res.memory_stats["hits"] == alone.memory_stats["hits"]


def test_affinity_keeps_the_hit_rate_as_replicas_grow_and_pow2_does_not(a40: Profile):
    spec = ReplicaSpec(records(300), a40, rate_per_replica=8.0, requests_per_replica=300,
                       adapters_per_replica=40)
    single = run_replicas(spec, 1, "pow2")
    affinity, pow2 = run_replicas(spec, 6, "affinity"), run_replicas(spec, 6, "pow2")
    assert affinity.requests == pow2.requests == 1800
    assert affinity.adapters == 240
    assert affinity.hit_rate >= 0.9 * single.hit_rate
    assert affinity.hit_rate > pow2.hit_rate
    assert affinity.loads_per_request < pow2.loads_per_request
    assert affinity.busiest_share < 1.5  # bounded load: no replica takes a hot adapter's whole traffic


def test_bounded_load_spreads_one_hot_adapter(a40: Profile):
    spec = ReplicaSpec(records(200), a40, rate_per_replica=8.0, requests_per_replica=200, adapters=1)
    spread = run_replicas(spec, 4, "affinity")
    assert spread.busiest_share < 1.5
    pure = run_replicas(replace(spec, affinity=replace(spec.affinity, load_slack=10**9)), 4, "affinity")
    assert pure.busiest_share == pytest.approx(4.0)  # no bound: everything on the adapter's home


def test_cli_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,input_tokens,output_tokens\n" +
                     "".join(f"{0.1 * i},{50 + i % 200},{10 + i % 40}\n" for i in range(100)))
    out = tmp_path / "out" / "rows.json"
    rc = chameleon_main(["simulate-replicas", "--trace", str(trace), "--replicas", "1,2",
                         "--requests-per-replica", "100", "--adapters-per-replica", "10", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "affinity" in table and "pow2" in table and "hit/1" in table
    rows = json.loads(out.read_text())["rows"]
    assert [(r["replicas"], r["policy"]) for r in rows] == [(1, "pow2"), (2, "pow2"), (2, "affinity")]
    bad = chameleon_main(["simulate-replicas", "--trace", str(trace), "--replica-policies", "random"])
    assert bad == 2 and "unknown replica policies" in capsys.readouterr().err


def test_affinity_weighs_the_costs_each_replica_reports(a40: Profile):
    spec = ReplicaSpec(records(300), a40, rate_per_replica=8.0, requests_per_replica=300,
                       adapters_per_replica=40)
    greedy = run_replicas(replace(spec, affinity=AffinityConfig(miss_weight=1.0)), 6, "affinity")
    pure = run_replicas(replace(spec, affinity=AffinityConfig(miss_weight=0.0)), 6, "affinity")
    # a load charged at its bare cost loses to any queue difference: requests spread, hits fall
    assert greedy.hit_rate < pure.hit_rate and greedy.loads_per_request > pure.loads_per_request
    view = ReplicaSim("r0", make_population(4), a40, SimConfig()).view()
    assert view.load_s > 0 and view.step_s > 0 and not view.costed  # no request yet: no prompt size
