"""The fast refresh equals the straightforward one: K-means (prefix sums) against a plain reference,
the resumable layout job against per-sample Python, and a refresh spread over steps keeps every queued
request exactly once, FIFO within each queue, with a consistent quota ledger."""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon.core.predictor import OraclePredictor
from chameleon.core.sched import ChameleonScheduler, MlqConfig, ScheduleContext, StaticQueuesScheduler
from chameleon.core.sched.kmeans import SortedValues, choose_k, kmeans_1d
from chameleon.core.sched.layout import Meter, Snapshot, layout_job, wrs_of
from chameleon.core.sched.quotas import QueueLoad, size_quotas, size_statistic
from chameleon.core.sched.window import Sample, WrsModel
from tests.policy.helpers import adapter_specs, memory, req


def ref_kmeans(values: list[float], k: int, max_iter: int = 100) -> tuple[list[float], float]:
    """Lloyd on sorted values, means and WCSS summed directly (the implementation before prefix sums)."""
    if not values:
        return [], 0.0
    distinct = sorted(set(values))
    k = min(k, len(distinct))
    centroids = [distinct[int((c + 0.5) * len(distinct) / k)] for c in range(k)]
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)

    def segments(cs: list[float]) -> list[tuple[int, int]]:
        cuts = [0] + [bisect_left(values, (a + b) / 2) for a, b in pairwise(cs)] + [len(values)]
        return [(cuts[i], cuts[i + 1]) for i in range(len(cs))]

    for _ in range(max_iter):
        new = [(prefix[j] - prefix[i]) / (j - i) for i, j in segments(centroids) if j > i]
        if new == centroids:
            break
        centroids = new
    wcss = 0.0
    for i, j in segments(centroids):
        if j > i:
            m = sum(values[i:j]) / (j - i)
            wcss += sum((v - m) ** 2 for v in values[i:j])
    return centroids, wcss


values_st = st.lists(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                     min_size=0, max_size=300)


@settings(max_examples=200, deadline=None)
@given(values_st, st.integers(1, 6))
def test_kmeans_matches_reference(values: list[float], k: int) -> None:
    values = sorted(values)
    got_c, got_w = kmeans_1d(values, k)
    ref_c, ref_w = ref_kmeans(values, k)
    assert got_c == ref_c  # same means from the same prefix sums: bit for bit
    assert got_w == pytest.approx(ref_w, rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(values_st, st.integers(1, 300))
def test_sorted_values_in_steps_equal_at_once(values: list[float], step: int) -> None:
    values = sorted(values)
    whole = SortedValues(values)
    parts = SortedValues.empty(values)
    for j in range(step, len(values) + step, step):
        parts.extend(min(j, len(values)))
    assert (parts.prefix, parts.prefix2, parts.distinct) == (whole.prefix, whole.prefix2, whole.distinct)
    assert whole.distinct == sorted(set(values))


def _samples(rng: random.Random, n: int, done: bool = False) -> list[Sample]:
    return [Sample(i * 0.01, rng.randint(1, 2000), rng.randint(1, 500), rng.choice([0, 16, 64, 256]),
                   rng.randint(10, 3000), rng.random() if done and rng.random() < 0.8 else None)
            for i in range(n)]


def ref_layout(snap: Snapshot, cfg: MlqConfig) -> tuple[list[float], list[int]]:
    """The refresh computed sample by sample with WrsModel (as before the resumable job)."""
    m = WrsModel(*snap.wrs_ab)
    m.max_in, m.max_out, m.max_adapter = snap.maxima
    wrs = sorted(m.of(s) for s in snap.arrivals)
    _, centroids, _ = choose_k(wrs, cfg.k_max, cfg.elbow)
    bounds = [(a + b) / 2 for a, b in pairwise(centroids)]
    k = len(bounds) + 1
    loads = []
    step, prefill = snap.cost_model
    for q in range(k):
        mine = [s for s in snap.arrivals if bisect_right(bounds, m.of(s)) == q]
        measured = [s.service_s or 0.0 for s in snap.completions if bisect_right(bounds, m.of(s)) == q]
        guesses = [s.input_tokens * prefill + s.output_tokens * step for s in mine]
        d = (sum(measured) / len(measured) if measured else
             sum(guesses) / len(guesses) if guesses and step > 0 else cfg.default_service_s)
        loads.append(QueueLoad(size_statistic([s.need for s in mine], cfg.size_stat), d,
                               len(mine) / snap.span_s))
    return bounds, size_quotas(loads, snap.capacity, cfg.slo_s, cfg.extra_weights,
                               cfg.rest_split == "proportional")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [None, 1, 97, 512])
def test_layout_job_matches_reference_at_any_budget(seed: int, budget: int | None) -> None:
    rng = random.Random(seed)
    arrivals = _samples(rng, rng.choice([1, 5, 300, 1500]))
    completions = _samples(rng, rng.choice([0, 40, 600]), done=True)
    maxima = (max(s.input_tokens for s in arrivals), max(s.output_tokens for s in arrivals),
              max(s.adapter_tokens for s in arrivals))
    snap = Snapshot(arrivals, completions, maxima, (0.4, 0.6, 0.05), (0.02, rng.choice([0.0, 1e-4])),
                    max(1.0, arrivals[-1].t), 50_000)
    cfg = MlqConfig(size_stat=rng.choice(["mean", "max", "p90"]))
    job = layout_job(snap, cfg, Meter(budget))
    steps = 0
    while True:
        try:
            next(job)
            steps += 1
        except StopIteration as stop:
            got = stop.value
            break
    assert budget is not None or steps == 0
    bounds, quotas = ref_layout(snap, cfg)
    assert got[0] == bounds
    assert got[1] == quotas
    model = WrsModel(0.4, 0.6, 0.05)
    model.max_in, model.max_out, model.max_adapter = maxima
    assert wrs_of(arrivals, maxima, (0.4, 0.6, 0.05)) == [model.of(s) for s in arrivals]


def _check(s: ChameleonScheduler) -> None:
    queued = [r for dq in s._queues for r in dq]
    assert len(queued) == len({r.id for r in queued}) == s.num_waiting()
    for q, dq in enumerate(s._queues):
        seqs = [r.seq for r in dq]
        assert seqs == sorted(seqs)  # FIFO by arrival within each queue
        assert all(s._where[r.id] == q for r in dq)
    s.ledger.check()


@pytest.mark.parametrize("cls", [ChameleonScheduler, StaticQueuesScheduler])
@pytest.mark.parametrize("budget", [None, 16, 64])
def test_refresh_over_steps_keeps_queues_consistent(cls: type[ChameleonScheduler],
                                                    budget: int | None) -> None:
    """Arrivals, admissions, finishes and cancellations while refreshes are spread over steps: every
    request is queued once, in arrival order per queue, the ledger matches, and all finish."""
    rng = random.Random(7)
    names = [a.adapter_id for a in adapter_specs()]
    cfg = MlqConfig(first_refresh_requests=20, refresh_requests=60, t_refresh_s=0.5, refresh_step_work=budget)
    s = cls(cfg, predictor=OraclePredictor())
    mem = memory(4000, block_size=1)
    now, rid, finished = 0.0, 0, 0
    for step in range(400):
        now += 0.05
        for _ in range(rng.choice([0, 0, 1, 3, 25]) if step < 300 else 0):
            s.add(req(rid, rng.choice([*names, None]), inp=rng.randint(1, 300), out=rng.randint(1, 40),
                      t=now), now)
            rid += 1
        if rng.random() < 0.05 and s.num_waiting():
            victim = rng.choice(s.waiting())
            assert s.cancel(victim.id, now)
        plan = s.schedule(now, ScheduleContext(mem, list(s._running.values()), est_step_s=0.05))
        for r in plan.squash:
            mem.release(r.id, now)
        for r in list(s._running.values()):
            r.generated += 1
            if r.generated >= (r.true_output_tokens or r.max_new_tokens):
                s.finish(r.id, now, r.generated)
                mem.release(r.id, now)
                finished += 1
        mem.take_offloads()
        _check(s)
    while s.num_waiting() or s._running:
        now += 0.05
        s.schedule(now, ScheduleContext(mem, list(s._running.values()), est_step_s=0.05))
        for r in list(s._running.values()):
            r.generated += 1
            if r.generated >= (r.true_output_tokens or r.max_new_tokens):
                s.finish(r.id, now, r.generated)
                mem.release(r.id, now)
        _check(s)
    assert s.refreshes >= 2 and s.ledger.used == [0] * len(s.ledger.quotas)
    assert finished > 0
