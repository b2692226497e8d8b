"""Quota sizing: each queue as an M/M/1 system that must meet the SLO, the rest split by weight.

Service rate of queue i with Tok tokens of quota: mu = Tok / (S_i * D_i) (Tok/S_i requests at a time,
each served in D_i seconds; S_i is the queue's request size, see `size_statistic`). Requiring the
M/M/1 time in system 1/(mu - lambda_i) <= SLO gives
    Tok_min_i = S_i * D_i * (1/SLO + lambda_i).
Each queue gets Tok_min_i; the rest of the total capacity is split by weights that decrease for
larger-request queues (default 1, 0.9, 0.8, ...: a gentle tilt; steep weights such as K..1 starve
the large-request queue near saturation in simulation). When the minima exceed the capacity they are
scaled down proportionally. Every quota is at least 1 token, so tiny systems still make progress (a request
larger than its whole quota is admitted alone, see the scheduler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """S: request size of the queue (tokens, see size_statistic); D: mean service time (s);
    lam: arrival rate (1/s)."""

    largest_tokens: float
    service_s: float
    arrival_rate: float


def size_statistic(needs: Sequence[int], stat: str) -> float:
    """S of a queue from its requests' needs: "max" (the paper: the largest request), "mean", or
    "pNN" (a percentile, e.g. "p90"). 0 for an empty queue."""
    if not needs:
        return 0.0
    if stat == "max":
        return float(max(needs))
    if stat == "mean":
        return sum(needs) / len(needs)
    if stat.startswith("p") and stat[1:].isdigit() and 0 < int(stat[1:]) <= 100:
        ordered = sorted(needs)
        return float(ordered[min(len(ordered) - 1, int(len(ordered) * int(stat[1:]) / 100))])
    raise ValueError(f"size statistic must be max, mean or pNN (e.g. p90), got {stat!r}")


def tok_min(load: QueueLoad, slo_s: float) -> float:
    return load.largest_tokens * load.service_s * (1.0 / slo_s + load.arrival_rate)


def default_weights(k: int) -> list[float]:
    """1, 0.9, 0.8, ... (never below 0.1)."""
    return [max(0.1, 1.0 - 0.1 * i) for i in range(k)]


def split_quotas(minima: Sequence[float], total: int, weights: Sequence[float] | None = None) -> list[int]:
    """Integer quotas: minima (scaled down if they exceed `total`) plus the rest split by weights."""
    k = len(minima)
    if k == 0:
        return []
    w = list(weights[:k]) if weights is not None else default_weights(k)
    w += [w[-1]] * (k - len(w))
    if sum(w) <= 0:
        w = [1.0] * k
    total = max(total, 0)
    need = sum(minima)
    base = [total * m / need for m in minima] if need > total else list(minima)
    rest = total - sum(base)
    shares = [b + rest * wi / sum(w) for b, wi in zip(base, w, strict=True)]
    quotas = [int(s) for s in shares]
    for i in range(total - sum(quotas)):
        quotas[i % k] += 1
    return [max(1, q) for q in quotas]


def size_quotas(loads: Sequence[QueueLoad], total: int, slo_s: float,
                weights: Sequence[float] | None = None, proportional: bool = False) -> list[int]:
    """Quotas from queue loads. proportional: the rest is split by weight x Tok_min (each queue's
    M/M/1 demand, tilted by the decreasing weights) instead of by the weights alone."""
    minima = [tok_min(x, slo_s) for x in loads]
    if proportional:
        w = list(weights[:len(minima)]) if weights is not None else default_weights(len(minima))
        w += [w[-1]] * (len(minima) - len(w))
        weights = [m * wi for m, wi in zip(minima, w, strict=True)]
        if sum(weights) <= 0:
            weights = None
    return split_quotas(minima, total, weights)
