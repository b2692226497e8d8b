"""Per-request records -> run statistics, and the sweep-level choices of `bench-compare`: the TTFT SLO,
the high load (lowest swept rate at which the baseline misses the SLO) and throughput at the SLO.

Errored requests have no TTFT: they are left out of the latency percentiles, counted in `errors`, and
count as SLO misses in `slo_attainment`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from chameleon.sim.metrics import percentile, throughput_at_slo

BASELINE = "fifo/none"   # S-LoRA's behaviour: FIFO scheduling, adapters loaded per batch, no cache
SLO_FACTOR = 5.0         # paper: TTFT SLO = 5x the mean request time at low load


@dataclass(slots=True)
class RequestRecord:
    """One replayed request. Times are seconds; `arrival_s` is the planned offset from the run start,
    `sent_s` the actual one; `ttft_s`/`e2e_s` are measured from `sent_s`. `gaps_s` holds every
    inter-token gap (token i-1 -> token i as the client saw them)."""

    id: int
    adapter_id: str | None
    input_tokens: int
    output_tokens: int
    arrival_s: float
    sent_s: float = math.nan
    ttft_s: float | None = None
    e2e_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0          # as the server counted them
    generated_tokens: int = 0
    stop_reason: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None


def _pcts(values: Sequence[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_p{q}_s": percentile(values, q) for q in (50, 90, 99)}


def summarise(records: Sequence[RequestRecord], slo_s: float | None = None) -> dict[str, float | int | None]:
    """Run statistics. Throughput = completed requests / (last completion - first planned arrival)."""
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    ends = [r.sent_s + r.e2e_s for r in ok if r.e2e_s is not None]
    start = min((r.arrival_s for r in records), default=0.0)
    span = (max(ends) - start) if ends else math.nan
    out: dict[str, float | int | None] = {
        "requests": len(records), "completed": len(ok), "errors": len(records) - len(ok),
        **_pcts(ttft, "ttft"), "ttft_mean_s": statistics.fmean(ttft) if ttft else math.nan,
        **_pcts(gaps, "tbt"),
        "e2e_mean_s": statistics.fmean([r.e2e_s for r in ok if r.e2e_s is not None]) if ok else math.nan,
        "throughput_rps": len(ok) / span if span and span > 0 else math.nan,
        "tokens_per_s": sum(r.generated_tokens for r in ok) / span if span and span > 0 else math.nan,
        "early_stops": sum(1 for r in ok if r.generated_tokens < r.output_tokens),
        "max_send_lag_s": max((r.sent_s - r.arrival_s for r in records if not math.isnan(r.sent_s)),
                              default=0.0),
    }
    out["slo_s"] = slo_s
    out["slo_attainment"] = (sum(1 for t in ttft if t <= slo_s) / len(records)) \
        if slo_s is not None and records else None
    return out


def slo_from_low_load(e2e_mean_s: float, factor: float = SLO_FACTOR) -> float:
    """The paper's SLO: `factor` x the mean request time of the baseline at low load."""
    if not e2e_mean_s > 0:
        raise ValueError("the low-load run of the baseline completed no request, so no SLO can be "
                         "derived from it; give --slo-s")
    return factor * e2e_mean_s


def high_load_rate(rates: Sequence[float], p99_ttft: Sequence[float | None],
                   slo_s: float) -> tuple[float, bool]:
    """(rate, found): the lowest swept rate at which P99 TTFT exceeds the SLO (a run without any
    completed request counts as a miss). When every rate meets the SLO: (highest rate, False)."""
    pairs = sorted(zip(rates, p99_ttft, strict=True))
    if not pairs:
        raise ValueError("no runs to choose a high load from")
    for rate, p99 in pairs:
        if p99 is None or math.isnan(p99) or p99 > slo_s:
            return rate, True
    return pairs[-1][0], False


def misses_slo(p99: float | None, slo_s: float) -> bool:
    """A run misses the SLO when its P99 TTFT exceeds it (a run without any completed request too)."""
    return p99 is None or math.isnan(p99) or p99 > slo_s


def sweep_stops(rate: float, p99: float | None, slo_s: float, high_load: float) -> bool:
    """After a run at `rate`, may a configuration skip its higher rates? Yes once it missed the SLO at
    or above the high load (the baseline's first miss): its throughput at the SLO is then bracketed
    (`slo_throughput` only looks up to the first miss) and its P99/P50 at the high load measured, so
    higher rates, which take longest to drain, add nothing to the summary. Assumes P99 TTFT grows
    with the rate; `bench-compare --full-sweep` checks that."""
    return rate >= high_load and misses_slo(p99, slo_s)


def slo_throughput(rates: Sequence[float], p99_ttft: Sequence[float | None],
                   slo_s: float) -> tuple[float, bool]:
    """(rps, bounded): the load at which P99 TTFT crosses the SLO, interpolated between swept rates
    (chameleon.sim.metrics.throughput_at_slo); unbounded when no rate or every rate met it."""
    p99 = [math.inf if v is None or math.isnan(v) else v for v in p99_ttft]
    res = throughput_at_slo(list(rates), p99, slo_s)
    return res.rps, res.bounded


def ratio(new: float | None, old: float | None) -> float | None:
    """new / old, or None when either is missing or old is 0."""
    if new is None or old is None or not old or math.isnan(new) or math.isnan(old):
        return None
    return new / old
