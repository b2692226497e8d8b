"""Backfilling behind a blocked starved head (chameleon.core.sched.backfill): the profile rule admits
what cannot delay the head or a request offered before it, refuses what could, and the head is
admitted by its booked step."""

from __future__ import annotations

import math
import random

import pytest

from chameleon.core.sched import MlqConfig, ScheduleContext
from chameleon.core.sched.backfill import Profile
from tests.policy.helpers import Engine, memory, req
from tests.policy.test_mlq_tail import ids, mlq


def test_profile_books_pages_over_steps() -> None:
    prof = Profile(20, [(5, 30), (25, 40), (5, 10)])            # 20 now, +40 at step 5, +40 at step 25
    assert (prof.at, prof.avail) == ([0, 5, 25], [20, 60, 100])
    assert prof.earliest(20, 1000) == 0 and prof.earliest(50, 3) == 5 and prof.earliest(101, 1) == math.inf
    prof.take(5, 50, 10)                                         # a reservation on [5, 15)
    assert (prof.at, prof.avail) == ([0, 5, 15, 25], [20, 10, 60, 100])
    assert prof.earliest(15, 5) == 0                             # [0, 5) has 20: done by step 5
    assert prof.earliest(15, 6) == 15                            # but [5, 15) only 10
    assert prof.earliest(10, 100) == 0 and prof.earliest(60, 1) == 15


def test_profile_of_running_requests() -> None:
    mem = memory(100)
    a, b, c = req(1, inp=10, max_new=30), req(2, inp=10, max_new=20), req(3, inp=5, max_new=5)
    for r in (a, b, c):
        assert mem.try_admit(r, 0.0) is not None                 # 40 + 30 + 10 = 80 of 100 pages
    a.generated, b.generated, c.generated = 5, 15, 0            # a ends in 25 steps, b and c in 5
    prof = Profile.of(req(4, inp=20, max_new=30), mem, [a, b, c])
    assert (prof.at, prof.avail) == ([0, 5, 25], [20, 60, 100])
    assert mem.admission_pages(req(4, inp=20, max_new=30)) == 50


def _blocked(quotas: tuple[int, int] = (1000, 1000), **cfg):
    """Request 1 runs, holding 600 of 1,000 pages for 50 steps. Request 2 needs 700 and is starved at
    t=1.5: 400 pages are free, so its shadow is 50 steps, with 300 pages of surplus."""
    s = mlq(list(quotas), [0.5], starve_factor=1.0, slo_s=1.0, **{"backfill_lookahead": 16, **cfg})
    mem = memory(1000)
    s.add(req(1, inp=550, out=50, t=0.0), 0.0)
    assert ids(s.schedule(0.0, ScheduleContext(mem))) == [1]
    s.add(req(2, inp=600, out=100, t=0.1), 0.1)
    return s, mem


def test_backfill_admits_what_ends_before_the_shadow_or_fits_its_surplus() -> None:
    s, mem = _blocked()
    s.add(req(3, inp=10, out=60, t=1.4), 1.4)      # outlives the shadow: 70 pages of the 300 surplus
    s.add(req(4, inp=10, out=200, t=1.4), 1.4)     # outlives it: 210 of the 230 left
    s.add(req(5, inp=10, out=60, t=1.4), 1.4)      # outlives it: 70 > the 20 left, refused
    s.add(req(6, inp=10, out=40, t=1.4), 1.4)      # ends within 50 steps: 50 of the 120 free pages
    s.add(req(7, inp=100, out=20, t=1.4), 1.4)     # ends early too, but 120 > the 70 free pages
    plan = s.schedule(1.5, ScheduleContext(mem))
    assert ids(plan) == [3, 4, 6] and s.backfill.total == 3
    assert [r.id for r in s.waiting()][:1] == [2]  # the head keeps its place
    assert s.stats()["backfills"] == 3


def test_a_reserved_request_is_not_delayed_either() -> None:
    """Conservative, not EASY: request 3 cannot start before step 150 (after the head), and is booked
    there; request 4 would fit beside the head but still hold 300 pages at step 150, delaying 3."""
    s, mem = _blocked()
    s.add(req(3, inp=500, out=300, t=1.4), 1.4)                 # 800 pages: booked at [150, 450)
    s.add(req(4, inp=10, out=290, t=1.4), 1.4)                  # 300 pages until step 290: refused
    s.add(req(5, inp=10, out=40, t=1.4), 1.4)                   # 50 pages until step 40: backfilled
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == [5]


def test_only_requests_whose_adapter_is_resident_are_backfilled() -> None:
    s, mem = _blocked()
    assert [aid for aid, _ in mem.prefetch(["r8-1"], 1.0)] == ["r8-1"]
    s.add(req(3, adapter="r8-0", inp=10, out=40, t=1.4), 1.4)   # fits, but its load would stall the step
    s.add(req(4, adapter="r8-1", inp=10, out=40, t=1.4), 1.4)   # resident: backfilled
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == [4]


def test_backfill_without_eviction_takes_only_free_pages() -> None:
    """backfill_evict=False: a request that fits only by evicting an idle cached adapter is not
    backfilled (the adapter would be reloaded later); one that fits the free pages is."""
    for evict, expected in ((True, [3]), (False, [])):
        s, mem = _blocked(backfill_evict=evict)
        assert [aid for aid, _ in mem.prefetch(["r8-1"], 1.0)] == ["r8-1"]
        free = mem.available()                                  # 400 minus the idle adapter's pages
        s.add(req(3, inp=free - 39, out=40, t=1.4), 1.4)       # free + 1 pages, ends within the shadow
        assert ids(s.schedule(1.5, ScheduleContext(mem))) == expected
    s, mem = _blocked(backfill_evict=False)
    assert [aid for aid, _ in mem.prefetch(["r8-1"], 1.0)] == ["r8-1"]
    s.add(req(4, inp=10, out=40, t=1.4), 1.4)
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == [4] and mem.resident("r8-1")


def test_backfill_stays_within_the_queue_quota() -> None:
    """Unless the request is starved itself: starved requests go whatever their queue's quota."""
    s, mem = _blocked(quotas=(700, 1000))                       # request 1 uses 600 of q0's 700
    s.add(req(3, inp=10, out=60, t=1.4), 1.4)                   # 70: within the quota
    s.add(req(4, inp=10, out=200, t=1.4), 1.4)                  # 210: over it
    s.add(req(6, inp=10, out=40, t=1.4), 1.4)                   # 50: over the 30 left
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == [3] and s.ledger.used[0] == 670
    s, mem = _blocked(quotas=(700, 1000))
    s.add(req(7, inp=10, out=100, t=0.2), 0.2)                  # 110, over the quota, but starved too
    s.add(req(3, inp=10, out=60, t=1.4), 1.4)
    assert ids(s.schedule(1.5, ScheduleContext(mem))) == [7] and s.ledger.used[0] == 710


def test_backfill_off_blocks_as_before() -> None:
    assert MlqConfig().backfill_lookahead == 16 and not MlqConfig().backfill_evict  # on, free pages only
    for cfg in (dict(backfill_lookahead=0), dict(starve_block=False, backfill_lookahead=16)):
        s, mem = _blocked(**cfg)
        s.add(req(6, inp=10, out=40, t=1.4), 1.4)
        assert ids(s.schedule(1.5, ScheduleContext(mem))) == [] and s.backfill.total == 0  # FIFO in q0


@pytest.mark.parametrize("seed", range(6))
def test_the_head_is_admitted_by_its_booked_step(seed: int) -> None:
    """Random overload on the policy-test engine (one token per step, requests run to max_new_tokens):
    every time backfilling runs behind a head, that head is admitted by the step it was booked at."""
    rng = random.Random(seed)
    s = mlq([4000, 4000], [0.3], starve_factor=1.0, slo_s=0.5, backfill_lookahead=16)
    mem = memory(3000)
    eng = Engine(s, mem, step_s=0.05)
    promised: dict[int, int] = {}  # head id -> the latest iteration its shadow allows
    fill = s.backfill.fill

    def watched(head, memory_, running, candidates, admit):
        profile = Profile.of(head, memory_, running)
        start = profile.earliest(memory_.admission_pages(head), head.max_new_tokens)
        if 0 < start < math.inf:
            promised[head.id] = min(promised.get(head.id, 1 << 30), eng.iteration + int(start))
        fill(head, memory_, running, candidates, admit)

    s.backfill.fill = watched  # type: ignore[method-assign]
    rid = 0
    for _ in range(400):
        for _ in range(rng.choice((0, 0, 1, 2))):
            rid += 1
            big = rng.random() < 0.2
            eng.add(req(rid, inp=rng.randint(200, 500) if big else rng.randint(5, 60),
                        max_new=rng.randint(100, 400) if big else rng.randint(5, 120)))
        eng.step()
    eng.drain()
    assert not s.num_waiting() and s.backfill.total > 0 and promised
    at = eng.admitted_at_iter
    late = {h: (at.get(h), by) for h, by in promised.items() if at.get(h, 1 << 30) > by}
    assert not late, late
