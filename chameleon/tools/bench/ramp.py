"""Capacity probe of `bench-compare`: an open-loop ramp that finds the rate where TTFT crosses the SLO.

Why not a closed loop: on the demo system the throughput falls as concurrency rises (32 closed-loop
clients keep ~32 distinct adapters in every batch: without a cache each request loads its adapter,
and every decode step computes every distinct adapter), so a closed-loop probe measured 0.6-0.75 rps
while open-loop Poisson arrivals at 1.8 rps still met the SLO. The sweep must bracket what open-loop
arrivals can sustain, so the probe uses open-loop arrivals too.

The ramp: Poisson arrivals (the same planned requests as a run, at unit rate, warped in time) at
`start_rps` for `first_step_s`, then at `growth` x the previous rate every `step_s`, up to `max_s`.
A request is *late* when its TTFT exceeds the limit (or it is still waiting for its first token that
long after it was sent, or it failed). A step *fails* when at least `min_late` of its requests (all of
them if it has fewer) are late; the ramp stops at the first failing step and cancels what is still
running. The limit is the given SLO, or else the paper's rule measured on the first step
(`slo_factor` x its median request time), close to the SLO the comparison derives afterwards from the
baseline's lowest rate (5 x its mean request time). Result: the highest rate whose step passed
(`sustained_rps`) and the first that failed (`crossed_rps`; None when the ramp ended without crossing).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import grpc
from chameleon_pb import generation_pb2_grpc

from chameleon.tools.bench.loadgen import CANCELLED, grpc_address, stream_one
from chameleon.tools.bench.stats import SLO_FACTOR, RequestRecord
from chameleon.workload import WorkItem


@dataclass(frozen=True, slots=True)
class RampStep:
    rate: float
    start_s: float
    end_s: float

    @property
    def unit_time(self) -> float:
        """Arrivals this step takes from a unit-rate Poisson process."""
        return self.rate * (self.end_s - self.start_s)


def ramp_steps(start_rps: float, growth: float, step_s: float, first_step_s: float,
               max_s: float) -> list[RampStep]:
    """Steps of the ramp: `start_rps` for `first_step_s`, then x `growth` every `step_s` until `max_s`."""
    if not (start_rps > 0 and growth > 1 and step_s > 0 and first_step_s > 0):
        raise ValueError("ramp: need start_rps > 0, growth > 1, step_s > 0 and first_step_s > 0")
    steps = [RampStep(start_rps, 0.0, first_step_s)]
    while steps[-1].end_s + step_s <= max_s + 1e-9:
        last = steps[-1]
        steps.append(RampStep(last.rate * growth, last.end_s, last.end_s + step_s))
    return steps


def warp(items: Sequence[WorkItem], steps: Sequence[RampStep]) -> list[WorkItem]:
    """Unit-rate arrivals -> ramp arrivals (unit time u in step i lands at start_i + (u - U_i)/rate_i,
    U_i the unit time of the steps before); items past the last step are dropped."""
    out: list[WorkItem] = []
    bounds: list[float] = []
    acc = 0.0
    for s in steps:
        bounds.append(acc)
        acc += s.unit_time
    for w in items:
        if w.arrival >= acc:
            continue
        i = max(k for k, b in enumerate(bounds) if b <= w.arrival)
        out.append(replace(w, arrival=steps[i].start_s + (w.arrival - bounds[i]) / steps[i].rate))
    return out


def unit_time(steps: Sequence[RampStep]) -> float:
    return sum(s.unit_time for s in steps)


def step_of(arrival_s: float, steps: Sequence[RampStep]) -> int:
    return max(i for i, s in enumerate(steps) if s.start_s <= arrival_s or i == 0)


def is_late(rec: RequestRecord, now_s: float, limit_s: float) -> bool:
    """Late: TTFT over the limit, failed, or sent and still without a first token after the limit (a
    request the probe itself cancelled at its end counts by its TTFT or wait so far)."""
    if rec.error is not None and rec.error != CANCELLED:
        return True
    if rec.ttft_s is not None:
        return rec.ttft_s > limit_s
    return not math.isnan(rec.sent_s) and now_s - rec.sent_s > limit_s


def step_fails(recs: Sequence[RequestRecord], now_s: float, limit_s: float, min_late: int = 2) -> bool:
    late = sum(1 for r in recs if is_late(r, now_s, limit_s))
    return bool(recs) and late >= min(min_late, len(recs))


@dataclass(frozen=True, slots=True)
class RampResult:
    limit_s: float
    sustained_rps: float | None     # highest rate whose step passed (None: the first step failed)
    crossed_rps: float | None       # first rate whose step failed (None: never crossed)
    steps: list[dict]               # per step: rate, requests, late, completed
    elapsed_s: float


async def ramp(target: str, items: Sequence[WorkItem], steps: Sequence[RampStep], *,
               limit_s: float | None, seed: int = 0, min_late: int = 2,
               slo_factor: float = SLO_FACTOR, poll_s: float = 0.25) -> RampResult:
    """Run the ramp (see the module docstring). `items` are already warped (`warp`)."""
    recs = [RequestRecord(w.id, w.adapter_id, w.input_tokens, w.output_tokens, w.arrival) for w in items]
    by_step: list[list[RequestRecord]] = [[] for _ in steps]
    for r in recs:
        by_step[step_of(r.arrival_s, steps)].append(r)
    t_begin = time.perf_counter()
    crossed: int | None = None
    async with grpc.aio.insecure_channel(grpc_address(target)) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        start = time.perf_counter() + 0.2
        tasks = [asyncio.ensure_future(stream_one(stub, w, r, start, seed, 600.0))
                 for w, r in zip(items, recs, strict=True)]
        try:
            while True:
                await asyncio.sleep(poll_s)
                now = time.perf_counter() - start
                if limit_s is None:
                    limit_s = _limit_from_first_step(by_step[0], now, steps[0], slo_factor)
                    if limit_s is None:
                        continue
                crossed = next((i for i, rs in enumerate(by_step)
                                if steps[i].start_s <= now and step_fails(rs, now, limit_s, min_late)), None)
                if crossed is not None:
                    break
                if all(t.done() for t in tasks) or now > steps[-1].end_s + limit_s + 1.0:
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    now = time.perf_counter() - start
    assert limit_s is not None
    rows = [{"rate": round(s.rate, 4), "requests": len(rs), "completed": sum(1 for r in rs if r.ok),
             "late": sum(1 for r in rs if is_late(r, now, limit_s))}
            for s, rs in zip(steps, by_step, strict=True)]
    last = len(steps) if crossed is None else crossed
    return RampResult(limit_s, steps[last - 1].rate if last > 0 else None,
                      steps[crossed].rate if crossed is not None else None,
                      rows[:last + 1], time.perf_counter() - t_begin)


def _limit_from_first_step(recs: Sequence[RequestRecord], now_s: float, step: RampStep,
                           factor: float) -> float | None:
    """`factor` x the first step's median request time (the median: the very first requests of a fresh
    system are slow outliers), once its requests are done (or 10 s after it ended: then from those
    done so far); None while it is too early to tell."""
    done = [r.e2e_s for r in recs if r.ok and r.e2e_s is not None]
    if now_s < step.end_s or (len(done) < len(recs) and now_s < step.end_s + 10.0):
        return None
    return factor * statistics.median(done) if done else 10.0 * factor   # nothing done in 10 s: all late
