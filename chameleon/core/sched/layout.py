"""The Chameleon refresh's layout computation as resumable work: K-means boundaries + M/M/1 quotas.

`layout_job` is a generator: it yields whenever it has done about `budget` units of work (one unit =
one window sample or completion touched) and finally returns (boundaries, quotas), so the scheduler
can spread a refresh over several schedule() steps (bounded step time) or run it to the end at once
(budget None). Its result does not depend on the budget: it reads only its arguments, a snapshot
taken when the refresh was due.

Same numbers as computing WrsModel.of(s) per sample, sorting, `choose_k` and per-queue statistics in
Python loops (the float operations are done in the same order), at a fraction of the cost: WRS in
list comprehensions with the maxima bound to locals, the sort as chunk sorts merged by timsort, queue
statistics from one bisect per sample.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

from chameleon.core.sched.config import MlqConfig
from chameleon.core.sched.kmeans import SortedValues, boundaries, elbow_k, lloyd
from chameleon.core.sched.quotas import QueueLoad, size_quotas, size_statistic
from chameleon.core.sched.shares import prefill_weights
from chameleon.core.sched.window import Sample

Job = Generator[None, None, tuple[list[float], list[int], list[float]]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a refresh reads, frozen when it was due. maxima: the WrsModel's (in, out, adapter) after
    its reset over `arrivals`; cost_model: (est_step_s, est_prefill_s_per_token); span_s: the
    window's span at that time."""

    arrivals: list[Sample]
    completions: list[Sample]
    maxima: tuple[int, int, int]
    wrs_ab: tuple[float, float, float]  # (a, b, base_factor)
    cost_model: tuple[float, float]
    span_s: float
    capacity: int


def wrs_of(samples: Sequence[Sample], maxima: tuple[int, int, int],
           wrs_ab: tuple[float, float, float]) -> list[float]:
    """WrsModel.wrs of every sample, bit for bit (same operations in the same order)."""
    a, b, base = wrs_ab
    mi, mo, ma = max(maxima[0], 1), max(maxima[1], 1), maxima[2]
    if ma <= 0:
        return [a * s.input_tokens / mi + b * s.output_tokens / mo for s in samples]
    return [(a * s.input_tokens / mi + b * s.output_tokens / mo)
            * (f if (f := s.adapter_tokens / ma) >= base else base) for s in samples]


class Meter:
    """Work done in the current step of a job, against its per-step budget (None: unlimited)."""

    def __init__(self, budget: int | None) -> None:
        self.budget, self.done = budget, 0

    def spend(self, units: int) -> bool:
        """Add `units`; True when the job should yield now (the next step starts from zero)."""
        self.done += units
        if self.budget is not None and self.done >= self.budget:
            self.done = 0
            return True
        return False

    def room_for(self, units: int) -> bool:
        """False when `units` more would overrun this step's budget after some work was done in it: the
        job should yield first (and then start the next step from zero)."""
        if self.budget is not None and self.done and self.done + units > self.budget:
            self.done = 0
            return False
        return True

    def slices(self, n: int, cost: int = 1) -> Iterator[tuple[int, int]]:
        """[i, j) slices of range(n) sized to what is left of the step's budget at `cost` units per
        item (one slice when unlimited). Lazy: spend (and yield) between slices."""
        i = 0
        while i < n:
            room = n - i if self.budget is None else max(1, (self.budget - self.done) // cost)
            yield i, min(n, i + room)
            i += room


def layout_job(snap: Snapshot, cfg: MlqConfig, meter: Meter) -> Job:
    """K-means boundaries over the snapshot's WRS, quotas from the per-queue loads, and the queues'
    prefill-budget weights (offered prompt tokens, or the quotas: `MlqConfig.prefill_share`)."""
    arrivals, maxima, ab = snap.arrivals, snap.maxima, snap.wrs_ab
    wrs: list[float] = []
    runs: list[float] = []
    for i, j in meter.slices(len(arrivals)):
        part = wrs_of(arrivals[i:j], maxima, ab)
        wrs += part
        part.sort()
        runs += part
        if meter.spend(j - i):
            yield
    if not meter.room_for(len(runs) // 4):
        yield
    runs.sort()  # sorted runs: timsort merges them in linear passes
    if meter.spend(len(runs) // 4):
        yield
    sv = SortedValues.empty(runs)
    for i, j in meter.slices(len(runs)):
        sv.extend(j)
        if meter.spend(j - i):
            yield
    results = []
    for k in range(1, cfg.k_max + 1):
        results.append(lloyd(sv, k))
        if meter.spend(k * min(64, len(runs))):  # O(iterations * K log n)
            yield
    _, centroids, _ = elbow_k(results, cfg.elbow)
    bounds = boundaries(centroids)
    k = len(bounds) + 1
    needs: list[list[int]] = [[] for _ in range(k)]
    guesses: list[list[float]] = [[] for _ in range(k)]
    offered = [0.0] * k
    step, prefill = snap.cost_model
    for i, j in meter.slices(len(arrivals), 2):
        for s, w in zip(arrivals[i:j], wrs[i:j], strict=True):
            q = bisect_right(bounds, w)
            needs[q].append(s.need)
            offered[q] += s.input_tokens
            guesses[q].append(s.input_tokens * prefill + s.output_tokens * step)
        if meter.spend(2 * (j - i)):
            yield
    service: list[list[float]] = [[] for _ in range(k)]
    comps = snap.completions
    for i, j in meter.slices(len(comps), 2):
        part = comps[i:j]
        for s, w in zip(part, wrs_of(part, maxima, ab), strict=True):
            service[bisect_right(bounds, w)].append(s.service_s or 0.0)
        if meter.spend(2 * (j - i)):
            yield
    loads = []
    for q in range(k):
        if service[q]:
            d = sum(service[q]) / len(service[q])
        elif guesses[q] and step > 0:
            d = sum(guesses[q]) / len(guesses[q])
        else:
            d = cfg.default_service_s
        loads.append(QueueLoad(size_statistic(needs[q], cfg.size_stat), d, len(needs[q]) / snap.span_s))
    quotas = size_quotas(loads, snap.capacity, cfg.slo_s, cfg.extra_weights, cfg.rest_split == "proportional")
    weights = [float(x) for x in quotas] if cfg.prefill_share == "quota" else offered
    return bounds, quotas, prefill_weights(weights, cfg.prefill_floor)
