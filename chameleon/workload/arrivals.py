"""Arrival processes: Poisson at a given rate, or a trace's own timestamps (optionally time-warped)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def unit_gaps(n: int, seed: int) -> list[float]:
    """`n` exponential(1) inter-arrival gaps. Dividing by a rate gives a Poisson process at that rate;
    reusing the same unit gaps for every rate keeps runs at different rates comparable.
    """
    rng = random.Random(seed)
    return [rng.expovariate(1.0) for _ in range(n)]


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Arrival times (s) of `n` requests of a Poisson process at `rate` requests/s; first one at its gap."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0 requests/s, got {rate}")
    t, out = 0.0, []
    for gap in unit_gaps(n, seed):
        t += gap / rate
        out.append(t)
    return out


def trace_arrivals(timestamps: Sequence[float], rate: float | None = None) -> list[float]:
    """The trace's own arrival times (relative), time-warped to average `rate` requests/s if given."""
    if not timestamps:
        return []
    t0 = timestamps[0]
    rel = [t - t0 for t in timestamps]
    if rate is None or len(rel) < 2 or rel[-1] <= 0:
        return rel
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0 requests/s, got {rate}")
    native = (len(rel) - 1) / rel[-1]
    return [t * native / rate for t in rel]
