"""Turn a trace into a simulator workload: lengths (scaled), adapters (assigned), arrivals.

Determinism: the same (records, options, seed) always yields the same items. Adapter choices and the
Poisson unit gaps use separate seeded streams, so every rate sees the same requests with the same
adapters, only spaced differently (common random numbers across a sweep).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from chameleon.workload.arrivals import poisson_arrivals, trace_arrivals
from chameleon.workload.population import AdapterInfo, AdapterSampler
from chameleon.workload.traces import TraceRecord


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One simulated request before it becomes a `chameleon.core.request.Request`."""

    id: int
    arrival: float
    adapter_id: str | None
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class LengthScale:
    """lengths -> max(1, round(length * scale)), then capped (0 = no cap)."""

    input_scale: float = 1.0
    output_scale: float = 1.0
    max_input: int = 0
    max_output: int = 0

    def __post_init__(self) -> None:
        if self.input_scale <= 0 or self.output_scale <= 0:
            raise ValueError("length scales must be > 0")
        if self.max_input < 0 or self.max_output < 0:
            raise ValueError("length caps must be >= 0 (0 = no cap)")

    def apply(self, n_in: int, n_out: int) -> tuple[int, int]:
        i = max(1, round(n_in * self.input_scale))
        o = max(1, round(n_out * self.output_scale))
        if self.max_input:
            i = min(i, self.max_input)
        if self.max_output:
            o = min(o, self.max_output)
        return i, o


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    rate: float | None = None          # requests/s; None = the trace's own rate (trace arrivals only)
    arrivals: str = "poisson"          # poisson | trace
    scale: LengthScale = LengthScale()
    exponent: float = 1.0              # power-law exponent of popularity within a rank class
    base_fraction: float = 0.0         # share of requests that use the base model (no adapter)
    limit: int = 0                     # first N records only (0 = all)
    seed: int = 0


def build_workload(records: Sequence[TraceRecord], population: Sequence[AdapterInfo],
                   opts: WorkloadOptions) -> list[WorkItem]:
    """Items sorted by arrival; ids are 0..n-1 in trace order."""
    if opts.arrivals not in ("poisson", "trace"):
        raise ValueError(f"arrivals must be 'poisson' or 'trace', got {opts.arrivals!r}")
    if not 0.0 <= opts.base_fraction <= 1.0:
        raise ValueError(f"base_fraction must be in [0, 1], got {opts.base_fraction}")
    recs = list(records[: opts.limit] if opts.limit else records)
    if opts.arrivals == "poisson":
        if opts.rate is None:
            raise ValueError("Poisson arrivals need a rate (requests/s)")
        times = poisson_arrivals(len(recs), opts.rate, seed=opts.seed * 7919 + 1)
    else:
        times = trace_arrivals([r.timestamp for r in recs], opts.rate)
    sampler = AdapterSampler(population, opts.exponent)
    rng = random.Random(opts.seed * 7919 + 2)
    items: list[WorkItem] = []
    for i, (rec, t) in enumerate(zip(recs, times, strict=False)):
        base = opts.base_fraction > 0 and rng.random() < opts.base_fraction
        adapter = sampler.draw(rng)
        n_in, n_out = opts.scale.apply(rec.input_tokens, rec.output_tokens)
        items.append(WorkItem(i, t, None if base else adapter, n_in, n_out))
    items.sort(key=lambda w: (w.arrival, w.id))
    return items
