from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from chameleon.workload import (
    AdapterSampler,
    LengthScale,
    TraceRecord,
    WorkloadOptions,
    build_workload,
    make_population,
    poisson_arrivals,
    trace_arrivals,
)


def _records(n: int) -> list[TraceRecord]:
    return [TraceRecord(float(i), 100 + i % 50, 10 + i % 7) for i in range(n)]


def test_population_even_over_ranks() -> None:
    pop = make_population(100)
    assert Counter(a.rank for a in pop) == {8: 20, 16: 20, 32: 20, 64: 20, 128: 20}
    assert len({a.adapter_id for a in pop}) == 100
    assert Counter(a.rank for a in make_population(7, (8, 16, 32))) == {8: 3, 16: 2, 32: 2}
    with pytest.raises(ValueError):
        make_population(0)


def test_sampler_uniform_ranks_power_law_within() -> None:
    pop = make_population(100)
    rank_of = {a.adapter_id: a.rank for a in pop}
    rng = random.Random(1)
    sampler = AdapterSampler(pop, exponent=1.0)
    draws = [sampler.draw(rng) for _ in range(100_000)]
    by_rank = Counter(rank_of[d] for d in draws)
    assert all(abs(c / len(draws) - 0.2) < 0.01 for c in by_rank.values())
    top, second, tenth = (Counter(draws)[f"lora-r32-{k:03d}"] for k in (1, 2, 10))
    assert top / second == pytest.approx(2.0, rel=0.2)     # k^-1: first twice as popular as second
    assert top / tenth == pytest.approx(10.0, rel=0.2)
    uniform = AdapterSampler(pop, exponent=0.0)
    flat = Counter(uniform.draw(rng) for _ in range(20_000))
    assert max(flat.values()) < 3 * min(flat.values())


def test_poisson_rate_and_common_random_numbers() -> None:
    a = poisson_arrivals(20_000, 10.0, seed=3)
    gaps = [y - x for x, y in zip([0.0, *a], a, strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.05)     # exponential: sd = mean
    b = poisson_arrivals(20_000, 5.0, seed=3)
    assert b[100] == pytest.approx(2 * a[100])
    with pytest.raises(ValueError):
        poisson_arrivals(3, 0.0, seed=0)


def test_trace_arrivals_warp() -> None:
    ts = [10.0, 11.0, 13.0, 14.0]
    assert trace_arrivals(ts) == [0.0, 1.0, 3.0, 4.0]
    warped = trace_arrivals(ts, rate=1.5)
    assert (len(ts) - 1) / warped[-1] == pytest.approx(1.5)


def test_length_scale() -> None:
    s = LengthScale(0.5, 0.25, max_input=40)
    assert s.apply(100, 8) == (40, 2)
    assert s.apply(1, 1) == (1, 1)
    with pytest.raises(ValueError):
        LengthScale(0.0)


def test_build_workload_deterministic_and_consistent() -> None:
    pop = make_population(20)
    opts = WorkloadOptions(rate=4.0, scale=LengthScale(0.5, 0.5), seed=9)
    a = build_workload(_records(500), pop, opts)
    assert a == build_workload(_records(500), pop, opts)
    assert a != build_workload(_records(500), pop, WorkloadOptions(rate=4.0, seed=10))
    assert [w.arrival for w in a] == sorted(w.arrival for w in a)
    b = build_workload(_records(500), pop, WorkloadOptions(rate=8.0, scale=LengthScale(0.5, 0.5), seed=9))
    assert [w.adapter_id for w in a] == [w.adapter_id for w in b]     # same adapters at every rate
    assert {w.input_tokens for w in a} <= {max(1, round(r.input_tokens * 0.5)) for r in _records(500)}


def test_build_workload_options() -> None:
    pop = make_population(10)
    recs = _records(100)
    based = build_workload(recs, pop, WorkloadOptions(rate=1.0, base_fraction=1.0))
    assert all(w.adapter_id is None for w in based)
    assert len(build_workload(recs, pop, WorkloadOptions(rate=1.0, limit=10))) == 10
    own = build_workload(recs, pop, WorkloadOptions(arrivals="trace"))
    assert [w.arrival for w in own] == [r.timestamp for r in recs]
    with pytest.raises(ValueError, match="rate"):
        build_workload(recs, pop, WorkloadOptions(arrivals="poisson"))
    with pytest.raises(ValueError):
        build_workload(recs, pop, WorkloadOptions(rate=1.0, arrivals="bursty"))
