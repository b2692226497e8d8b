"""The comparison's text tables and the simulator prediction of a bench run."""

from __future__ import annotations

import math

from chameleon.sim.paper_a40 import build
from chameleon.tools.bench.machine import loadavg_1m
from chameleon.tools.bench.predict import SIM_POLICY, predict, predict_steady
from chameleon.tools.bench.report import (
    format_predictions,
    format_runs,
    format_steady,
    format_summary,
    summarise_configs,
)
from chameleon.workload import LengthScale, TraceRecord


def test_every_default_config_has_a_simulator_policy() -> None:
    for config in ("fifo/none", "sjf/none", "chameleon/chameleon", "chameleon/none", "fifo/chameleon"):
        sched, _, cache = config.partition("/")
        assert (sched, cache) in SIM_POLICY


def test_prediction_replays_the_same_number_of_requests() -> None:
    records = [TraceRecord(0.1 * i, 300, 40) for i in range(50)]
    pred = predict(records, 20, build(), "chameleon/chameleon", 2.0, n_adapters=10, ranks=(8, 16),
                   scale=LengthScale(0.25, 0.25), arrivals="poisson", exponent=1.0, base_fraction=0.0,
                   seed=0, max_prefill_tokens=1024, slo_s=5.0)
    assert pred is not None and pred["policy"] == "chameleon" and pred["ttft_p50_s"] > 0
    assert predict(records, 20, build(), "sjf/lru", 2.0, n_adapters=10, ranks=(8,),
                   scale=LengthScale(), arrivals="poisson", exponent=1.0, base_fraction=0.0, seed=0,
                   max_prefill_tokens=1024, slo_s=5.0) is None


def test_steady_state_simulates_every_config_with_ratios_to_the_first() -> None:
    records = [TraceRecord(0.1 * i, 300, 40) for i in range(400)]
    rows = predict_steady(records, 300, build(), ["fifo/none", "fifo/chameleon", "sjf/lru"], 8.0,
                          n_adapters=20, ranks=(8, 128), scale=LengthScale(0.25, 0.25), arrivals="poisson",
                          exponent=1.0, base_fraction=0.0, seed=0, max_prefill_tokens=1024, slo_s=5.0)
    assert [r["config"] for r in rows] == ["fifo/none", "fifo/chameleon"]  # no simulator policy for sjf/lru
    assert all(r["requests"] == 300 for r in rows)
    assert rows[0]["ttft_p99_s_vs_baseline"] == 1.0
    cached = rows[1]
    assert cached["ttft_p50_s_vs_baseline"] == cached["ttft_p50_s"] / rows[0]["ttft_p50_s"]
    assert cached["cache_hit_rate"] > rows[0]["cache_hit_rate"]
    table = format_steady(rows)
    assert "fifo/chameleon" in table and "1.00x" in table


def test_tables_show_the_machine_load_and_skipped_rates() -> None:
    run = {"config": "fifo/none", "rate": 1.0, "requests": 3, "errors": 0, "ttft_p50_s": 0.2,
           "ttft_p90_s": 0.3, "ttft_p99_s": 2.0, "tbt_p50_s": 0.1, "tbt_p99_s": 0.2, "throughput_rps": 1.0,
           "slo_attainment": 0.5, "cache_hit_rate": 0.5, "loadavg_1m_before": 1.25, "loadavg_1m_after": 3.5,
           "scheduler_refreshes_total": 2.0}
    assert "1.2->3.5" in format_runs([run]) and "      2 " in format_runs([run])
    summary, high = summarise_configs([run], slo_s=1.0)
    meta = {**high, "skipped_rates": {"fifo/none": [1.5, 2.0]}, "loadavg_1m_start": 0.5,
            "loadavg_1m_end": 2.0, "loadavg_1m_max": 3.5, "cpus": 2}
    text = format_summary(summary, meta, 1.0)
    assert "not run at 1.50, 2.00 rps" in text and "max 3.50" in text and "2 CPUs" in text


def test_machine_load_is_a_number_where_the_os_reports_it() -> None:
    load = loadavg_1m()
    assert load is None or load >= 0.0


def test_tables_print_missing_values_as_dashes() -> None:
    run = {"config": "fifo/none", "rate": 1.0, "requests": 3, "errors": 3, "ttft_p50_s": math.nan,
           "ttft_p90_s": math.nan, "ttft_p99_s": math.nan, "tbt_p50_s": math.nan, "tbt_p99_s": math.nan,
           "throughput_rps": None, "slo_attainment": 0.0, "cache_hit_rate": None}
    assert "fifo/none" in format_runs([run]) and "-->-" in format_runs([run])   # load average unknown
    summary, high = summarise_configs([run], slo_s=1.0)
    text = format_summary(summary, high, 1.0)
    assert "high load = 1.00 rps" in text and "-" in text
    pred = {"config": "fifo/none", "rate": 1.0, "measured_ttft_p50_s": 0.5, "predicted_ttft_p50_s": 0.4,
            "measured_ttft_p99_s": 1.0, "predicted_ttft_p99_s": None, "p50_rel_error": -0.2}
    assert "-20%" in format_predictions([pred])


def test_sweep_extends_only_while_every_rate_met_the_slo() -> None:
    from chameleon.tools.bench.compare import Context, _with_extension

    ctx = Context([1.0, 2.0], slo_s=3.0)
    rows: list[dict] = []
    seen = []
    for rate in _with_extension([1.0, 2.0], rows, ctx, 2):
        seen.append(rate)
        rows.append({"config": "c", "rate": rate, "ttft_p99_s": 1.0 if rate < 3 else 5.0})
    assert seen == [1.0, 2.0, 2.6, 3.38]  # 2.6 met the SLO, so one more; the caller stops at 3.38's miss
    rows2: list[dict] = []
    seen2 = []
    for rate in _with_extension([1.0, 2.0], rows2, ctx, 2):
        seen2.append(rate)
        rows2.append({"config": "c", "rate": rate, "ttft_p99_s": 1.0 if rate < 2 else 4.0})
    assert seen2 == [1.0, 2.0]  # missed within the sweep: no extension
    assert list(_with_extension([1.0], [], ctx, 0)) == [1.0]
