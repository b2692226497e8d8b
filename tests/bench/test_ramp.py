"""Unit tests of the capacity probe's open-loop ramp (chameleon/tools/bench/ramp.py): its steps, the time
warp of the planned arrivals, and when a step counts as failed."""

from __future__ import annotations

import pytest

from chameleon.tools.bench.ramp import is_late, ramp_steps, step_fails, step_of, unit_time, warp
from chameleon.tools.bench.stats import RequestRecord
from chameleon.workload import WorkItem


def test_steps_grow_geometrically_and_stay_within_the_budget() -> None:
    steps = ramp_steps(0.5, 2.0, 5.0, 10.0, max_s=30.0)
    assert [s.rate for s in steps] == [0.5, 1.0, 2.0, 4.0, 8.0][:len(steps)]
    assert [(s.start_s, s.end_s) for s in steps] == [(0, 10), (10, 15), (15, 20), (20, 25), (25, 30)]
    assert unit_time(steps) == pytest.approx(0.5 * 10 + (1 + 2 + 4 + 8) * 5)
    with pytest.raises(ValueError):
        ramp_steps(0.5, 1.0, 5.0, 10.0, 30.0)


def test_warp_maps_unit_rate_arrivals_onto_the_steps() -> None:
    steps = ramp_steps(1.0, 2.0, 4.0, 4.0, max_s=8.0)          # 1 rps for 4 s, then 2 rps for 4 s
    items = [WorkItem(i, u, "a", 10, 3) for i, u in enumerate([0.0, 2.0, 3.9, 4.0, 6.0, 11.9, 12.0, 20.0])]
    out = warp(items, steps)
    assert [w.id for w in out] == [0, 1, 2, 3, 4, 5]               # unit time 12 and beyond: past the end
    assert [w.arrival for w in out] == pytest.approx([0.0, 2.0, 3.9, 4.0, 5.0, 7.95])
    assert [step_of(w.arrival, steps) for w in out] == [0, 0, 0, 1, 1, 1]
    assert all(a.input_tokens == b.input_tokens for a, b in zip(out, items, strict=False))


def _rec(ttft: float | None, sent: float = 0.0, error: str | None = None) -> RequestRecord:
    return RequestRecord(0, "a", 10, 3, 0.0, sent_s=sent, ttft_s=ttft, error=error)


def test_late_requests_and_failing_steps() -> None:
    assert is_late(_rec(5.0), now_s=6.0, limit_s=4.0)
    assert not is_late(_rec(3.0), now_s=60.0, limit_s=4.0)
    assert is_late(_rec(None, sent=1.0), now_s=5.5, limit_s=4.0)       # still waiting past the limit
    assert not is_late(_rec(None, sent=1.0), now_s=4.5, limit_s=4.0)
    assert not is_late(_rec(None, sent=float("nan")), now_s=99.0, limit_s=4.0)   # not sent yet
    assert is_late(_rec(None, error="UNAVAILABLE"), now_s=0.0, limit_s=4.0)
    ok, late = _rec(1.0), _rec(9.0)
    assert not step_fails([ok, ok, late], 10.0, 4.0)                   # one outlier is not a crossing
    assert step_fails([ok, late, late], 10.0, 4.0)
    assert step_fails([late], 10.0, 4.0)                               # a one-request step: all late
    assert not step_fails([], 10.0, 4.0)
