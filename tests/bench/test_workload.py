"""Unit tests of the bench workload (adapter population, request plan, prompts) and small helpers."""

from __future__ import annotations

import pytest

from chameleon.tools.bench.compare import parse_configs, parse_rates
from chameleon.tools.bench.loadgen import grpc_address
from chameleon.tools.bench.profile import fit_line
from chameleon.tools.bench.scrape import delta, parse_metrics
from chameleon.tools.bench.workload import BenchOptions, plan, population, prompt_text
from chameleon.workload import TraceRecord

SERVED = [(f"r{r}-{k:02d}", r) for r in (8, 16, 32) for k in range(4)]
TRACE = [TraceRecord(0.5 * i, 100 + 37 * (i % 11), 10 + 13 * (i % 7)) for i in range(400)]


def test_population_splits_evenly_over_ranks_in_name_order() -> None:
    pop = population(SERVED, 7)
    by_rank = {r: [a.adapter_id for a in pop if a.rank == r] for r in (8, 16, 32)}
    assert [len(v) for v in by_rank.values()] == [3, 2, 2]
    assert by_rank[16] == ["r16-00", "r16-01"]
    with pytest.raises(ValueError, match="offers 12 adapters"):
        population(SERVED, 13)


def test_plan_is_deterministic_and_higher_rates_replay_the_same_requests() -> None:
    pop = population(SERVED, 12)
    opts = BenchOptions(rate=2.0, duration_s=20.0, length_scale=0.5, max_output=30, seed=3)
    a, b = plan(TRACE, pop, opts, 4096, 4096), plan(TRACE, pop, opts, 4096, 4096)
    assert a == b and all(w.arrival < 20.0 for w in a)
    fast = plan(TRACE, pop, BenchOptions(rate=4.0, duration_s=20.0, length_scale=0.5, max_output=30, seed=3),
                4096, 4096)
    assert len(fast) > len(a)
    assert [(w.adapter_id, w.input_tokens, w.output_tokens) for w in fast[: len(a)]] == \
        [(w.adapter_id, w.input_tokens, w.output_tokens) for w in a]
    assert all(w.output_tokens <= 30 and w.input_tokens == max(1, round(TRACE[w.id].input_tokens * 0.5))
               for w in a)


def test_plan_fits_the_servers_limits() -> None:
    items = plan(TRACE, population(SERVED, 12), BenchOptions(rate=5.0, duration_s=30.0, length_scale=1.0),
                 max_total=150, max_new=40)
    assert items and all(w.input_tokens + w.output_tokens <= 150 and w.output_tokens <= 40 for w in items)
    with pytest.raises(ValueError):
        BenchOptions(rate=0.0, duration_s=1.0)


def test_prompts_are_distinct_and_long_enough() -> None:
    a, b = prompt_text(1, 50), prompt_text(2, 50)
    assert a != b and len(a.split()) >= 50 and prompt_text(1, 50) == a


def test_helpers_reject_bad_input_clearly() -> None:
    assert grpc_address("grpc://127.0.0.1:8033") == "127.0.0.1:8033"
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        grpc_address("grpc://nowhere")
    assert parse_configs("chameleon/chameleon,fifo/none") == ["fifo/none", "chameleon/chameleon"]
    with pytest.raises(ValueError, match="SCHEDULER/CACHE"):
        parse_configs("fifo/lfu")
    assert parse_rates("2,1, 3") == [1.0, 2.0, 3.0] and parse_rates(None) is None
    with pytest.raises(ValueError):
        parse_rates("1,-2")
    assert fit_line([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx((1.0, 2.0))


def test_metrics_deltas_give_the_hit_rate_over_a_run() -> None:
    text = ("# HELP chameleon_cache_hits_total x\nchameleon_cache_hits_total 10.0\n"
            "chameleon_cache_misses_total 5\nchameleon_pool_pages{tenant=\"kv\"} 3\n")
    before = parse_metrics(text)
    after = {**before, "chameleon_cache_hits_total": 19.0, "chameleon_cache_misses_total": 6.0}
    assert delta(before, after)["cache_hit_rate"] == pytest.approx(0.9)
    assert delta(None, after) == {"cache_hit_rate": None}
    later = {**after, "chameleon_scheduler_refreshes_total": 1.0}
    d = delta(after, later)
    assert d["scheduler_refreshes"] == 1.0 and d["scheduler_refreshes_total"] == 1.0
    assert delta(before, after)["scheduler_refreshes_total"] is None    # FIFO: no such counter
