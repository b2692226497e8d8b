from __future__ import annotations

import math

import pytest

from chameleon.sim.metrics import (
    percentile,
    slo_attainment,
    throughput,
    throughput_at_slo,
    weighted_percentile,
)


def test_percentiles() -> None:
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([0, 10], 99) == pytest.approx(9.9)
    assert math.isnan(percentile([], 50))
    assert weighted_percentile([1.0, 5.0], [99, 1], 99) == 1.0
    assert weighted_percentile([1.0, 5.0], [98, 2], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_slo_and_throughput() -> None:
    assert slo_attainment([1, 2, 3, 10], 3) == 0.75
    assert throughput(10, 0.0, 5.0) == 2.0


def test_throughput_at_slo_interpolates() -> None:
    got = throughput_at_slo([5, 6, 7], [1.0, 4.0, 6.0], slo_s=5.0)
    assert got.rps == pytest.approx(6.5) and got.bounded
    unbounded = throughput_at_slo([5, 6], [1.0, 2.0], 5.0)
    assert unbounded.rps == 6 and not unbounded.bounded
    assert throughput_at_slo([5, 6], [9.0, 12.0], 5.0).rps == 0.0
    # A later recovery does not count: the SLO throughput is the first crossing.
    assert throughput_at_slo([5, 6, 7], [1.0, 9.0, 2.0], 5.0).rps == pytest.approx(5.5)
