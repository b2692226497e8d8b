"""bench-compare presets, the SLO handed to launched Chameleon systems, counter tables, and
`--workload` in the bench tools."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from chameleon.tools.bench import compare, report, scrape
from chameleon.tools.bench.cli import build_parser as bench_parser
from chameleon.tools.bench.system import SystemSpec
from chameleon.tools.bench.workload import WORKLOAD_TO_TRACE, load_records
from chameleon.workload import make_workload


def test_presets_give_launch_flags_and_launch_args_override() -> None:
    args = compare.build_parser().parse_args(["--preset", "memory-bound"])
    assert args.launch_args is None
    budget = shlex.split(compare.PRESETS[args.preset])
    assert int(budget[budget.index("--memory-budget") + 1]) < 4 * 1024**3
    assert "--memory-budget" in compare.PRESETS["default"]
    with pytest.raises(SystemExit):
        compare.build_parser().parse_args(["--preset", "tiny"])


def test_the_slo_reaches_chameleon_systems_only() -> None:
    spec = SystemSpec(None, None, ("--memory-budget", "1"))
    assert compare.with_slo(spec, "chameleon", 2.5).extra[-2:] == ("--mlq-slo-s", "2.500")
    assert compare.with_slo(spec, "fifo", 2.5) == spec
    assert compare.with_slo(spec, "chameleon", None) == spec
    given = SystemSpec(None, None, ("--mlq-slo-s", "9"))
    assert compare.with_slo(given, "chameleon", 2.5) == given


def test_counter_deltas_and_table() -> None:
    names = scrape.COUNTERS
    before = dict.fromkeys(names, 0.0)
    after = {**before, "chameleon_cache_evictions_total": 7.0, "chameleon_scheduler_quota_stops_total": 3.0,
             "chameleon_scheduler_bypasses_total": 2.0, "chameleon_adapter_loads_total": 12.0}
    d = scrape.delta(before, after)
    assert (d["evictions"], d["quota_stops"], d["bypasses"], d["adapter_loads"]) == (7.0, 3.0, 2.0, 12.0)
    row = {"config": "chameleon/chameleon", "rate": 1.0, **d, "reloads_min": 4.0}
    table = report.format_counters([row, {"config": "fifo/none", "rate": 1.0}])
    assert "evict" in table and "quota st" in table and " 7 " in table
    assert table.splitlines()[3].split()[2] == "-"


def test_bench_workload_replaces_the_trace(tmp_path: Path) -> None:
    args = bench_parser().parse_args(["--workload", "bursty", "--seed", "3"])
    recs = load_records(args)
    w = make_workload("bursty", 10, 3)
    assert args.arrivals == "trace" and args.popularity_exponent == w.exponent
    assert recs[0].input_tokens == w.records[0].input_tokens * WORKLOAD_TO_TRACE
    tail = bench_parser().parse_args(["--workload", "long-tail", "--popularity-exponent", "0.5"])
    load_records(tail)
    assert tail.popularity_exponent == 0.5
    both = bench_parser().parse_args(["--workload", "bimodal", "--trace", str(tmp_path / "t.csv")])
    with pytest.raises(ValueError, match="not both"):
        load_records(both)
    with pytest.raises(ValueError, match="--workload"):
        load_records(bench_parser().parse_args([]))
