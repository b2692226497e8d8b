"""Output-length predictors."""

from __future__ import annotations

import pytest

from chameleon.core.predictor import NoisyOraclePredictor, OnlinePredictor, OraclePredictor, make_predictor
from tests.policy.helpers import req


def test_online_per_adapter_mean_with_global_and_default_fallback():
    p = OnlinePredictor(window=3, min_samples=2, default_output=50)
    assert p.predict(req(1, "a", max_new=500)) == 50
    p.observe("a", 10)
    assert p.predict(req(1, "a", max_new=500)) == 10  # one sample: global mean
    for n in (20, 30, 40):
        p.observe("a", n)
    assert p.predict(req(1, "a", max_new=500)) == 30  # window of the last 3: 20, 30, 40
    p.observe("b", 100)
    assert p.predict(req(1, "b", max_new=500)) == 40  # b has 1 sample: global mean (10+20+30+40+100)/5
    assert p.predict(req(1, "a", max_new=25)) == 25  # clamped to max_new_tokens


def test_oracle_and_noisy_oracle():
    assert OraclePredictor().predict(req(1, out=7, max_new=9)) == 7
    exact = NoisyOraclePredictor(1.0, seed=3)
    assert exact.predict(req(1, out=7, max_new=9)) == 7
    noisy = NoisyOraclePredictor(0.6, seed=3)
    reqs = [req(i, out=100, max_new=10_000) for i in range(2000)]
    hits = sum(noisy.predict(r) == 100 for r in reqs)
    assert 0.55 < hits / len(reqs) < 0.65
    assert all(noisy.predict(r) in range(12, 801) for r in reqs)  # off by at most x8
    assert [noisy.predict(r) for r in reversed(reqs)][::-1] == [noisy.predict(r) for r in reqs]


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError):
        NoisyOraclePredictor(1.5)
    with pytest.raises(ValueError, match="choose one of"):
        make_predictor("bert")
    assert isinstance(make_predictor("noisy", p=0.8, seed=1), NoisyOraclePredictor)
