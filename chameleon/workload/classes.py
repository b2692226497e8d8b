"""Synthetic workload classes: each stresses one regime of the scheduler and the adapter cache.

A class is a seeded generator of `TraceRecord`s (token lengths from distributions; timestamps only
where the arrival process itself is the point, as for `bursty`) plus its adapter population and the
arrival rates its sweep covers. Same (name, n, seed), same records. Lengths are in tokens as served
(no length scaling), sized for the simulator's A40/Llama-7B profile; the rates bracket each class's
capacity on that profile (from below the knee to past FIFO's SLO throughput).

Classes:
- `prefill-heavy`: long prompts, short answers (lognormal prompt median 1,500 / mean 2,000 tokens,
  output median 13 / mean 28): per-step prefill compute binds, memory does not.
- `decode-heavy`: short prompts, long answers (prompt median 100, output median 300 / mean 400):
  KV memory (reserved for max_new_tokens) binds.
- `bimodal`: 95% small requests (prompt median 150, output median 40) and 5% huge ones (prompt median
  3,000, output median 400): head-of-line blocking and starvation of the huge ones.
- `bursty`: chat-sized requests whose arrivals alternate ON periods (4x the mean rate) and OFF
  periods (0.25x), exponential durations with mean 20 s ON / 60 s OFF; warped to each swept rate.
- `long-tail`: chat-sized requests over 1,000 adapters (ranks 8..128) with a steep power law
  (exponent 1.3) within each rank: a few hot adapters and a long tail of rare ones that do not all fit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from chameleon.workload.traces import TraceRecord


@dataclass(frozen=True, slots=True)
class LogNormal:
    """A lognormal length with the given median and mean (mean >= median), rounded and clipped."""

    median: float
    mean: float
    lo: int = 1
    hi: int = 1 << 20

    def sample(self, rng: random.Random) -> int:
        sigma = math.sqrt(2.0 * math.log(max(self.mean, self.median) / self.median))
        return min(self.hi, max(self.lo, round(rng.lognormvariate(math.log(self.median), sigma))))


@dataclass(frozen=True, slots=True)
class SyntheticWorkload:
    """records: the requests (timestamps relative, used when `arrivals` is "trace"); rates: the
    default sweep (requests/s); n_adapters/exponent: the adapter population and its popularity."""

    name: str
    records: tuple[TraceRecord, ...]
    arrivals: str
    rates: tuple[float, ...]
    n_adapters: int = 100
    exponent: float = 1.0


@dataclass(frozen=True, slots=True)
class ClassSpec:
    lengths: Callable[[random.Random], tuple[int, int]]
    rates: tuple[float, ...]
    arrivals: str = "poisson"
    n_adapters: int = 100
    exponent: float = 1.0


def _pair(inp: LogNormal, out: LogNormal) -> Callable[[random.Random], tuple[int, int]]:
    return lambda rng: (inp.sample(rng), out.sample(rng))


def _bimodal(rng: random.Random) -> tuple[int, int]:
    if rng.random() < 0.05:
        return LogNormal(3000, 3300, 64, 12000).sample(rng), LogNormal(400, 500, 1, 2048).sample(rng)
    return LogNormal(150, 200, 1, 2000).sample(rng), LogNormal(40, 55, 1, 512).sample(rng)


_CHAT = _pair(LogNormal(150, 200, 1, 4000), LogNormal(30, 40, 1, 512))

CLASSES: dict[str, ClassSpec] = {
    "prefill-heavy": ClassSpec(_pair(LogNormal(1500, 2000, 16, 12000), LogNormal(13, 28, 1, 512)),
                               (0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)),
    "decode-heavy": ClassSpec(_pair(LogNormal(100, 150, 1, 2000), LogNormal(300, 400, 1, 2048)),
                              (1.0, 1.5, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0)),
    "bimodal": ClassSpec(_bimodal, (1.5, 2.0, 2.5, 3.0, 3.25, 3.5, 3.75, 4.0)),
    "bursty": ClassSpec(_CHAT, (3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 9.0), arrivals="trace"),
    "long-tail": ClassSpec(_CHAT, (4.0, 6.0, 7.0, 8.0, 9.0, 9.5, 10.0, 11.0), n_adapters=1000, exponent=1.3),
}
WORKLOADS: tuple[str, ...] = tuple(CLASSES)


def on_off_times(n: int, rng: random.Random, on_rate: float = 4.0, off_rate: float = 0.25,
                 on_s: float = 20.0, off_s: float = 60.0) -> list[float]:
    """`n` arrival times of a Poisson process whose rate alternates on_rate (ON, exponential duration
    with mean on_s) and off_rate (OFF, mean off_s), starting ON. Mean rate about 1 with the defaults."""
    out: list[float] = []
    t, on = 0.0, True
    end = rng.expovariate(1.0 / on_s)
    while len(out) < n:
        t += rng.expovariate(on_rate if on else off_rate)
        while t > end:  # memoryless: the time past the switch is redrawn at the new rate
            t, on = end, not on
            end = t + rng.expovariate(1.0 / (on_s if on else off_s))
            t += rng.expovariate(on_rate if on else off_rate)
        out.append(t)
    return out


def make_workload(name: str, n: int = 4000, seed: int = 0) -> SyntheticWorkload:
    """The class `name` with `n` requests, deterministic under `seed`."""
    spec = CLASSES.get(name)
    if spec is None:
        raise ValueError(f"unknown workload {name!r}; choose one of: {', '.join(WORKLOADS)}")
    if n < 1:
        raise ValueError(f"a workload needs at least one request, got {n}")
    rng = random.Random(f"{name}:{seed}")
    lengths = [spec.lengths(rng) for _ in range(n)]
    times = on_off_times(n, rng) if spec.arrivals == "trace" else [float(i) for i in range(n)]
    records = tuple(TraceRecord(t, i, o) for t, (i, o) in zip(times, lengths, strict=True))
    return SyntheticWorkload(name, records, spec.arrivals, spec.rates, spec.n_adapters, spec.exponent)
