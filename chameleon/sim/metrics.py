"""Metrics of a run: percentiles, SLO attainment, throughput, and throughput at the SLO of a sweep."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics; nan when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def weighted_percentile(values: Sequence[float], weights: Sequence[int], q: float) -> float:
    """Percentile of a multiset where values[i] occurs weights[i] times (lower order statistic)."""
    if len(values) != len(weights):
        raise ValueError("values and weights differ in length")
    pairs = sorted((v, w) for v, w in zip(values, weights, strict=False) if w > 0)
    total = sum(w for _, w in pairs)
    if not total:
        return math.nan
    target = max(1, math.ceil(total * q / 100.0))
    seen = 0
    for v, w in pairs:
        seen += w
        if seen >= target:
            return v
    return pairs[-1][0]


def slo_attainment(ttft: Sequence[float], slo_s: float) -> float:
    """Share of requests whose TTFT is within the SLO."""
    return sum(1 for t in ttft if t <= slo_s) / len(ttft) if ttft else math.nan


def throughput(finished: int, first_arrival: float, last_finish: float) -> float:
    """Completed requests per second over the span from the first arrival to the last completion."""
    span = last_finish - first_arrival
    return finished / span if span > 0 else math.nan


@dataclass(frozen=True, slots=True)
class SloThroughput:
    """Highest load meeting the SLO. `bounded` is False when every swept rate met it (the true value
    is at least `rps`) or none did (`rps` = 0)."""

    rps: float
    bounded: bool


def throughput_at_slo(rates: Sequence[float], p99_ttft: Sequence[float], slo_s: float) -> SloThroughput:
    """Rates ascending with their P99 TTFT. The SLO holds while P99 TTFT <= slo; the answer is the rate
    where P99 crosses the SLO, interpolated linearly between the last passing and first failing rate."""
    pairs = sorted(zip(rates, p99_ttft, strict=False))
    if not pairs:
        raise ValueError("no runs to compute a throughput from")
    if pairs[0][1] > slo_s:
        return SloThroughput(0.0, False)
    for (r0, p0), (r1, p1) in itertools.pairwise(pairs):
        if p1 > slo_s:
            frac = (slo_s - p0) / (p1 - p0) if p1 > p0 else 0.0
            return SloThroughput(r0 + (r1 - r0) * frac, True)
    return SloThroughput(pairs[-1][0], False)
