"""The MLQ's tail guards beyond the paper (issue 17): prefill-budget shares, the starvation bound, and
quota charges in whole pages."""

from __future__ import annotations

import pytest

from chameleon.core.predictor import OraclePredictor
from chameleon.core.sched import ChameleonScheduler, MlqConfig, ScheduleContext, SchedulerLimits
from chameleon.core.sched.shares import PrefillShares, prefill_weights
from chameleon.core.sched.starvation import WaitTracker
from tests.policy.helpers import memory, req

BASE = dict(need="predicted", first_refresh_requests=None, t_refresh_s=1e9, bypass=False)


def mlq(quotas: list[int], bounds: list[float], prefill: list[float] | None = None,
        limits: SchedulerLimits | None = None, **cfg) -> ChameleonScheduler:
    """Layout imposed; WRS maxima pinned at In=Out=1000 (WRS = 0.4 In/1000 + 0.6 Out/1000)."""
    s = ChameleonScheduler(MlqConfig(**{**BASE, **cfg}), predictor=OraclePredictor(), limits=limits)
    s.set_layout(bounds, quotas, prefill)
    s.model.observe(1000, 1000, 0)
    return s


def ids(plan) -> list[int]:
    return [r.id for r in plan.admit]


def test_prefill_weights_floor_and_normalise() -> None:
    w = prefill_weights([900.0, 100.0, 0.0], floor=0.3)
    assert sum(w) == pytest.approx(1.0)
    assert w[2] > 0 and w[0] > w[1] > w[2]
    assert prefill_weights([0.0, 0.0]) == [0.5, 0.5]
    assert prefill_weights([]) == []


def test_credits_accrue_only_while_waiting_and_cap_at_the_head() -> None:
    sh = PrefillShares([3.0, 1.0])
    sh.start_step(1000, [100, 3000])          # shares 750 / 250
    assert sh.credit == [750.0, 250.0]
    sh.start_step(1000, [100, 3000])
    assert sh.credit[0] == 750.0               # capped at max(share, head prompt): no hoarding
    assert sh.credit[1] == 500.0 and sh.order() == [1, 0]  # q1 saved more than one share: goes first
    sh.spend(1, 400)
    assert sh.credit[1] == 100.0
    sh.start_step(1000, [0, 0])
    assert sh.credit == [0.0, 0.0]             # empty queues keep no credit


def test_prefill_share_gives_the_large_queue_its_turn() -> None:
    """Small prompts keep arriving in q0; q1 holds a 3,000-token prompt. Without shares q0 fills every
    step's 4,096-token budget and q1 waits while q0 is non-empty; with shares q1 saves credit and
    goes first once it covers its prompt."""
    def run(share: str) -> int | None:
        s = mlq([100_000, 100_000], [0.5], [1.0, 1.0], SchedulerLimits(max_prefill_tokens=4096),
                prefill_share=share, starve_factor=0, compute_fcfs=0)
        mem = memory(1_000_000)
        s.add(req(999, inp=3000, out=900, t=0.0), 0.0)
        rid = 0
        for step in range(1, 20):
            now = step * 0.1
            for _ in range(10):
                s.add(req(rid, inp=400, out=1, t=now), now)
                rid += 1
            plan = s.schedule(now, ScheduleContext(mem))
            if 999 in ids(plan):
                return step
        return None

    assert run("none") is None
    assert run("quota") is not None and run("quota") <= 3


def test_phase2_hands_out_the_prefill_left_over() -> None:
    """q1's credit does not cover its head, but the step's budget is otherwise unused: phase 2 admits it."""
    s = mlq([10_000, 10_000], [0.5], [1.0, 0.01], SchedulerLimits(max_prefill_tokens=4096),
            prefill_share="quota", starve_factor=0)
    s.add(req(1, inp=3000, out=900), 0.0)
    assert ids(s.schedule(0.0, ScheduleContext(memory(100_000)))) == [1]


def test_wait_tracker_thresholds() -> None:
    slo = WaitTracker(2, factor=2.0, floor_s=0.5, basis="slo", slo_s=4.0)
    assert slo.threshold(0) == 8.0 and slo.starved(1, 8.5) and not slo.starved(1, 7.9)
    q = WaitTracker(2, factor=3.0, floor_s=1.0, basis="queue", alpha=0.5)
    q.observe(0, 4.0)
    q.observe(0, 2.0)
    assert q.expected == [3.0, 0.0] and q.threshold(0) == 9.0 and q.threshold(1) == 3.0
    g = WaitTracker(2, factor=1.0, floor_s=0.0, basis="global")
    g.observe(1, 5.0)
    assert g.threshold(0) == 5.0
    q.relayout(3)
    assert q.expected == [1.5, 1.5, 1.5]
    assert not WaitTracker(1, 0.0, 1.0).starved(0, 1e9)  # factor 0: off


def test_starved_head_goes_first_beyond_its_quota() -> None:
    """q1's quota is full (a running request holds it); its queued head waits past the bound and is
    admitted ahead of q0's newer requests, charged to q1 over its quota."""
    s = mlq([50, 300], [0.5], starve_factor=1.0, slo_s=2.0)  # q0 can lend q1 only 50
    mem = memory(100_000)
    s.add(req(1, inp=200, out=700, t=0.0), 0.0)                 # q1: need 900 > its 300 quota
    assert ids(s.schedule(0.0, ScheduleContext(mem))) == [1]      # alone in q1: charged the whole quota
    s.add(req(2, inp=100, out=800, t=0.5), 0.5)                 # q1, blocked by the quota
    assert ids(s.schedule(0.5, ScheduleContext(mem))) == []
    for rid in (3, 4):
        s.add(req(rid, inp=10, out=10, t=2.4), 2.4)             # q0, newer
    plan = s.schedule(2.6, ScheduleContext(mem))                 # request 2 waited 2.1 s > 1 x 2 s
    assert ids(plan) == [2, 3, 4] and s.waits.starved_total == 1
    assert s.ledger.used[1] == 300 + 900
    s.ledger.check()


def test_starved_head_that_does_not_fit_blocks_newer_work() -> None:
    """Nothing newer goes while a starved head does not fit, except what backfilling proves harmless
    (tests/policy/test_backfill.py): request 3 would outlive the head's shadow (50 steps) and holds more
    than its surplus (50 pages)."""
    s = mlq([1000, 1000], [0.5], starve_factor=1.0, slo_s=1.0)
    mem = memory(1000)
    s.add(req(1, inp=850, out=50, t=0.0), 0.0)
    assert ids(s.schedule(0.0, ScheduleContext(mem))) == [1]     # holds 900 of 1,000 pages
    s.add(req(2, inp=100, out=850, t=0.1), 0.1)                  # needs 950
    s.add(req(3, inp=1, out=51, t=1.5), 1.5)                     # 52 pages for 51 steps
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == []      # 2 is starved and does not fit: 3 waits
    s.finish(1, 2.0, 50)
    mem.release(1, 2.0)
    assert ids(s.schedule(2.0, ScheduleContext(mem))) == [2]
    s2 = mlq([1000, 1000], [0.5], starve_factor=1.0, slo_s=1.0, starve_block=False)
    mem2 = memory(1000)
    s2.add(req(1, inp=850, out=50, t=0.0), 0.0)
    s2.schedule(0.0, ScheduleContext(mem2))
    s2.add(req(2, inp=100, out=850, t=0.1), 0.1)
    s2.add(req(3, inp=1, out=51, t=1.5), 1.5)
    assert ids(s2.schedule(1.5, ScheduleContext(mem2))) == [3]   # without blocking, newer work runs


def test_waiting_lists_starved_requests_first_in_admission_order() -> None:
    """waiting() is the prefetch order: the requests the next schedule() admits first (starved ones,
    oldest first across queues, each queue's starved prefix) come before the round robin, and the
    order matches what schedule() then admits (backfilling off: it would admit 4 behind 2)."""
    s = mlq([1000, 1000], [0.5], starve_factor=1.0, slo_s=1.0, backfill_lookahead=0)
    mem = memory(1000)
    s.add(req(1, inp=100, out=800, t=0.0), 0.0)
    assert ids(s.schedule(0.0, ScheduleContext(mem))) == [1]     # holds 900 of 1,000 pages
    s.add(req(2, inp=60, out=60, t=0.1), 0.1)                     # q0: its quota has room, memory not
    s.add(req(3, inp=100, out=780, t=0.2), 0.2)                   # q1
    s.add(req(4, inp=40, out=40, t=0.3), 0.3)                     # q0
    s.add(req(5, inp=40, out=40, t=1.4), 1.4)                     # q0, young
    s.add(req(6, inp=100, out=800, t=1.45), 1.45)                 # q1, young
    assert [r.id for r in s.waiting()] == [2, 3, 4, 6, 5]        # no schedule() since t=0: round robin
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == []      # 2, 3, 4 starved; 2 does not fit
    assert [r.id for r in s.waiting()] == [2, 3, 4, 5, 6]        # starved by arrival, then round robin
    assert [r.id for r in s.waiting(2)] == [2, 3]
    s.finish(1, 2.0, 800)
    mem.release(1, 2.0)
    assert ids(s.schedule(2.0, ScheduleContext(mem)))[:2] == [2, 3]
    off = mlq([1000, 1000], [0.5], starve_factor=0.0, slo_s=1.0)  # no bound: the round robin alone
    for r in (req(7, inp=100, out=800, t=0.0), req(8, inp=40, out=40, t=0.1), req(9, inp=40, out=40, t=0.2)):
        off.add(r, r.arrival)
    off.schedule(5.0, ScheduleContext(memory(10)))
    assert [r.id for r in off.waiting()] == [8, 7, 9]


def test_reserved_need_is_counted_in_whole_pages() -> None:
    """need "reserved" charges the KV pages the request will hold (block 16: 17 tokens = 2 pages)."""
    cfg = MlqConfig(first_refresh_requests=None, t_refresh_s=1e9)
    s = ChameleonScheduler(cfg, predictor=OraclePredictor())
    s.add(req(1, inp=10, max_new=7), 0.0)
    s.schedule(0.0, ScheduleContext(memory(1000, block_size=16)))
    assert s.ledger.charged(1) == 32


def test_config_validation() -> None:
    for bad in (dict(prefill_share="x"), dict(starve_basis="x"), dict(starve_factor=-1),
                dict(prefill_floor=2.0)):
        with pytest.raises(ValueError):
            MlqConfig(**bad)
