"""Summary rules of `chameleon simulate`: the high load is where FIFO (S-LoRA) first misses the SLO."""

from __future__ import annotations

from chameleon.sim.report import high_load_rate, summarise
from chameleon.sim.runner import RunSummary


def run(policy: str, rate: float, p99: float, p50: float = 0.1) -> RunSummary:
    return RunSummary(policy=policy, rate=rate, requests=10, ttft_p50_s=p50, ttft_p99_s=p99, ttft_mean_s=p50,
                      tbt_p99_s=0.1, throughput_rps=rate, e2e_mean_s=1.0, cache_hit_rate=0.0,
                      adapter_bytes_loaded=0, adapter_loads=0, prefetches=0, load_stall_s=0.0, squashes=0,
                      iterations=1, wall_s=0.0, cpu_s=0.0)


def test_high_load_is_the_lowest_rate_where_fifo_misses_the_slo() -> None:
    runs = [run("fifo", 6, 1.0), run("fifo", 8, 4.0), run("fifo", 9, 7.0), run("fifo", 10, 30.0),
            run("chameleon", 6, 0.5, 0.05), run("chameleon", 8, 1.0), run("chameleon", 9, 2.0, 0.05),
            run("chameleon", 10, 6.0)]
    summary, high = summarise(runs, slo_s=5.0)
    assert high == 9   # paper: high load 9 rps, just past S-LoRA's 8.6 rps SLO throughput
    assert summary["chameleon"]["ttft_p99_high_s"] == 2.0
    assert summary["chameleon"]["p50_reduction_vs_fifo"] == 0.5


def test_high_load_fallbacks() -> None:
    summary = {"chameleon": {"slo_throughput_rps": 10.0}}
    assert high_load_rate(summary, [5, 7, 9], {5: 1.0, 7: 2.0, 9: 3.0}, slo_s=5.0) == 9   # never missed
    assert high_load_rate(summary, [5, 7, 9]) == 7   # no fifo: 70% of Chameleon's SLO throughput
