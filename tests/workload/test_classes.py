"""Synthetic workload classes: deterministic, shaped as documented, and usable by the simulator CLI."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from chameleon.workload import WORKLOADS, make_workload
from chameleon.workload.classes import LogNormal, on_off_times


def test_every_class_is_seeded_and_deterministic() -> None:
    assert set(WORKLOADS) == {"prefill-heavy", "decode-heavy", "bimodal", "bursty", "long-tail"}
    for name in WORKLOADS:
        a, b = make_workload(name, 300, seed=1), make_workload(name, 300, seed=1)
        assert a == b and len(a.records) == 300
        assert make_workload(name, 300, seed=2).records != a.records
        assert list(a.rates) == sorted(a.rates) and a.rates[0] > 0
        assert all(r.input_tokens >= 1 and r.output_tokens >= 1 for r in a.records)
        ts = [r.timestamp for r in a.records]
        assert ts == sorted(ts)


def test_shapes_follow_their_regimes() -> None:
    n = 4000
    pre = make_workload("prefill-heavy", n).records
    dec = make_workload("decode-heavy", n).records
    assert 1300 < statistics.median(r.input_tokens for r in pre) < 1700
    assert statistics.median(r.output_tokens for r in pre) < 20
    med_out, med_in = (statistics.median(r.output_tokens for r in dec),
                       statistics.median(r.input_tokens for r in dec))
    assert med_out > 2 * med_in
    bim = make_workload("bimodal", n).records
    huge = sum(r.input_tokens > 1000 for r in bim) / n
    assert 0.03 < huge < 0.07
    tail = make_workload("long-tail", n)
    assert tail.n_adapters >= 1000 and tail.exponent > 1.0


def test_bursty_arrivals_alternate_dense_and_sparse_periods() -> None:
    times = on_off_times(5000, random.Random(3))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    assert 0.5 < 1 / mean < 2.0                               # mean rate about 1
    assert statistics.pstdev(gaps) > 1.5 * mean               # far burstier than Poisson (stdev = mean)
    assert make_workload("bursty", 100).arrivals == "trace"


def test_lognormal_median_mean_and_clip() -> None:
    rng = random.Random(0)
    xs = [LogNormal(100, 150, 1, 10_000).sample(rng) for _ in range(20_000)]
    assert 90 < statistics.median(xs) < 110 and 135 < statistics.fmean(xs) < 165
    assert all(1 <= LogNormal(100, 1000, 5, 50).sample(rng) <= 50 for _ in range(200))


def test_unknown_class_and_bad_size() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("nope")
    with pytest.raises(ValueError):
        make_workload("bimodal", 0)
