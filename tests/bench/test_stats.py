"""Unit tests of the bench statistics, the SLO / high-load choices and the comparison summary."""

from __future__ import annotations

import math

import pytest

from chameleon.tools.bench.report import summarise_configs
from chameleon.tools.bench.stats import (
    RequestRecord,
    high_load_rate,
    misses_slo,
    ratio,
    slo_from_low_load,
    slo_throughput,
    summarise,
    sweep_stops,
)


def _rec(i: int, arrival: float, ttft: float | None, e2e: float | None, gaps: list[float] | None = None,
         error: str | None = None, gen: int = 3, out: int = 3) -> RequestRecord:
    return RequestRecord(i, "a", 10, out, arrival, sent_s=arrival, ttft_s=ttft, e2e_s=e2e, gaps_s=gaps or [],
                         prompt_tokens=10, generated_tokens=gen, error=error)


def test_summary_counts_every_request_and_keeps_errors_out_of_latencies() -> None:
    recs = [_rec(0, 0.0, 0.1, 0.5, [0.2, 0.2]), _rec(1, 1.0, 0.3, 0.9, [0.3, 0.3]),
            _rec(2, 2.0, None, None, error="UNAVAILABLE"), _rec(3, 3.0, 0.2, 1.0, [0.25], gen=2)]
    s = summarise(recs, slo_s=0.25)
    assert (s["requests"], s["completed"], s["errors"]) == (4, 3, 1)
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["ttft_p99_s"] == pytest.approx(0.2 + 0.98 * 0.1)
    assert s["tbt_p50_s"] == pytest.approx(0.25)
    # the errored request counts as a miss: 2 of 4 within 0.25 s
    assert s["slo_attainment"] == pytest.approx(0.5)
    assert s["throughput_rps"] == pytest.approx(3 / 4.0)   # last completion 3.0 + 1.0, first arrival 0
    assert s["early_stops"] == 1
    assert s["e2e_mean_s"] == pytest.approx((0.5 + 0.9 + 1.0) / 3)


def test_summary_of_a_run_without_completions_is_nan_not_an_error() -> None:
    s = summarise([_rec(0, 0.0, None, None, error="DEADLINE_EXCEEDED")], slo_s=1.0)
    assert s["completed"] == 0 and s["errors"] == 1
    assert math.isnan(s["ttft_p50_s"]) and math.isnan(s["throughput_rps"])
    assert s["slo_attainment"] == 0.0


def test_high_load_is_the_lowest_rate_where_the_baseline_misses() -> None:
    assert high_load_rate([1, 2, 3, 4], [0.5, 0.9, 2.0, 9.0], slo_s=1.0) == (3, True)
    assert high_load_rate([4, 1, 3, 2], [9.0, 0.5, 2.0, 0.9], slo_s=1.0) == (3, True)   # any order
    assert high_load_rate([1, 2], [0.5, None], slo_s=1.0) == (2, True)                 # no completion
    assert high_load_rate([1, 2], [0.5, 0.6], slo_s=1.0) == (2, False)                 # never missed
    with pytest.raises(ValueError):
        high_load_rate([], [], 1.0)


def test_a_sweep_stops_only_after_a_miss_at_or_above_the_high_load() -> None:
    assert misses_slo(1.5, 1.0) and misses_slo(None, 1.0) and misses_slo(math.nan, 1.0)
    assert not misses_slo(1.0, 1.0)
    assert sweep_stops(2.0, 1.5, slo_s=1.0, high_load=2.0)
    assert sweep_stops(3.0, None, slo_s=1.0, high_load=2.0)          # nothing completed: a miss
    assert not sweep_stops(1.0, 1.5, slo_s=1.0, high_load=2.0)       # below the high load: keep going
    assert not sweep_stops(3.0, 0.9, slo_s=1.0, high_load=2.0)       # met the SLO: keep going
    # what stopping skips cannot change the summary: the throughput at the SLO only looks up to the
    # first miss
    assert slo_throughput([1, 2, 3], [0.5, 1.5, 0.7], 1.0) == slo_throughput([1, 2], [0.5, 1.5], 1.0)


def test_slo_throughput_interpolates_and_flags_unbounded() -> None:
    rps, bounded = slo_throughput([1, 2, 3], [0.5, 0.9, 1.9], slo_s=1.0)
    assert bounded and rps == pytest.approx(2.1)
    assert slo_throughput([1, 2], [0.5, 0.6], 1.0) == (2, False)
    assert slo_throughput([1, 2], [2.0, 3.0], 1.0) == (0.0, False)
    assert slo_throughput([1, 2], [0.5, None], 1.0) == (1, True)


def test_slo_from_low_load_and_ratio() -> None:
    assert slo_from_low_load(0.4) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="--slo-s"):
        slo_from_low_load(math.nan)
    assert ratio(1.0, 2.0) == 0.5
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None and ratio(math.nan, 1.0) is None


def _row(config: str, rate: float, p50: float, p99: float, hit: float | None = None) -> dict:
    return {"config": config, "rate": rate, "ttft_p50_s": p50, "ttft_p99_s": p99, "cache_hit_rate": hit,
            "errors": 0}


def test_compare_summary_uses_the_baselines_high_load_for_everyone() -> None:
    rows = [_row("fifo/none", 1, 0.2, 0.5), _row("fifo/none", 2, 0.4, 1.5), _row("fifo/none", 3, 2.0, 9.0),
            _row("chameleon/chameleon", 1, 0.1, 0.3, 0.9), _row("chameleon/chameleon", 2, 0.1, 0.6, 0.95),
            _row("chameleon/chameleon", 3, 0.5, 3.0, 0.97)]
    summary, high = summarise_configs(rows, slo_s=1.0)
    assert high == {"high_load_rps": 2, "baseline_misses_slo": True, "baseline": "fifo/none"}
    cham, fifo = summary["chameleon/chameleon"], summary["fifo/none"]
    assert cham["ttft_p99_s_at_high_load"] == 0.6 and cham["ttft_p50_s_at_high_load"] == 0.1
    assert cham["cache_hit_rate"] == 0.95
    assert fifo["slo_throughput_rps"] == pytest.approx(1.5)
    assert cham["slo_throughput_rps"] == pytest.approx(2 + 0.4 / 2.4)
    assert cham["ttft_p99_x_baseline"] == pytest.approx(0.4)
    assert cham["slo_throughput_x_baseline"] == pytest.approx(cham["slo_throughput_rps"] / 1.5)
    assert fifo["ttft_p50_x_baseline"] == pytest.approx(1.0)
