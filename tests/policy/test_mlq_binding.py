"""The MLQ's arrival-order mode where the per-step prefill budget binds (issue 17, MlqConfig.compute_fcfs,
chameleon.core.sched.binding)."""

from __future__ import annotations

import pytest

from chameleon.core.predictor import OraclePredictor
from chameleon.core.sched import ChameleonScheduler, MlqConfig, ScheduleContext, SchedulerLimits
from chameleon.core.sched.binding import BindingTracker
from tests.policy.helpers import memory, req

BASE = dict(need="predicted", first_refresh_requests=None, t_refresh_s=1e9, bypass=False,
            prefill_share="none", starve_factor=0)


def mlq(**cfg) -> ChameleonScheduler:
    """Two queues split at WRS 0.5 (WRS maxima pinned at In=Out=1000), large quotas: memory never binds."""
    s = ChameleonScheduler(MlqConfig(**{**BASE, **cfg}), predictor=OraclePredictor(),
                           limits=SchedulerLimits(max_prefill_tokens=4096))
    s.set_layout([0.5], [1_000_000, 1_000_000], [1.0, 1.0])
    s.model.observe(1000, 1000, 0)
    return s


def test_indicator_is_prefill_left_below_every_head() -> None:
    t = BindingTracker(threshold=0.5, alpha=0.5)
    t.observe(admitted=2, prefill_left=100, head_prompts=[400, 3000])   # no head fits: prefill-bound
    assert t.share == 1.0
    t.observe(admitted=2, prefill_left=500, head_prompts=[400, 3000])   # the small head would fit
    assert t.share == 0.5
    t.observe(admitted=0, prefill_left=4096, head_prompts=[5000])       # nothing admitted: not compute
    assert t.share == 0.5 * 0.5
    t.observe(admitted=1, prefill_left=0, head_prompts=[])              # nothing queued: not a sample
    assert t.share == 0.25


def test_warm_up_mean_threshold_and_hysteresis() -> None:
    t = BindingTracker(threshold=0.4, alpha=0.1)
    for _ in range(3):
        t.observe(1, 0, [10])
    assert t.share == 1.0 and t.compute_bound                           # plain mean: on after 3 steps
    for _ in range(3):
        t.observe(1, 100, [10])
    assert t.share == pytest.approx(0.5) and t.compute_bound
    while t.share >= 0.2:                                               # stays on down to half the threshold
        assert t.compute_bound
        t.observe(1, 100, [10])
    assert not t.compute_bound and t.flips == 2
    off = BindingTracker(threshold=0.0)
    off.observe(1, 0, [10])
    assert not off.enabled and not off.compute_bound and off.share == 0.0


def _flood(s: ChameleonScheduler, steps: int) -> int | None:
    """q1 holds an old 3,000-token prompt; ten 400-token prompts arrive in q0 each step, so q0 alone fills
    every step's 4,096-token budget. Returns the step at which the large request is admitted."""
    mem = memory(1_000_000)
    s.add(req(999, inp=3000, out=900, t=0.0), 0.0)
    rid = 0
    for step in range(1, steps + 1):
        now = step * 0.1
        for _ in range(10):
            s.add(req(rid, inp=400, out=1, t=now), now)
            rid += 1
        if 999 in [r.id for r in s.schedule(now, ScheduleContext(mem)).admit]:
            return step
    return None


def test_prefill_bound_steps_switch_the_mlq_to_arrival_order() -> None:
    """Without the mode the small queue passes the large request forever (shares and bound off);
    with it, prefill-bound steps turn arrival order on and the oldest request goes next."""
    assert _flood(mlq(compute_fcfs=0), 30) is None
    s = mlq(compute_fcfs=0.3)
    step = _flood(s, 30)
    assert step is not None and step <= 3
    assert s.binding.compute_bound and s.stats()["compute_fcfs"]


def test_arrival_order_mode_orders_waiting_by_arrival() -> None:
    """waiting() (the prefetch order) follows arrival order in the mode, round robin over queues without."""
    on, off = mlq(compute_fcfs=0.3), mlq(compute_fcfs=0)
    for s in (on, off):
        _flood(s, 3)
        s.add(req(2000, inp=3000, out=900, t=0.35), 0.35)                 # q1
        s.add(req(3000, inp=400, out=1, t=0.36), 0.36)                    # q0, newest
    assert on.binding.compute_bound
    order = [r.id for r in on.waiting()]
    assert order[-2:] == [2000, 3000] and order == sorted(order)       # ids rise with arrival here
    assert [r.id for r in off.waiting()] == [3000, 999, 2000]          # q0's head first, then q1's


def test_memory_bound_steps_keep_the_queues() -> None:
    """Memory, not the prefill budget, stops admission: the mode stays off and a newer small request
    still passes an older large one that does not fit."""
    s = mlq(compute_fcfs=0.3)
    mem = memory(1000)
    s.add(req(1, inp=100, out=800, t=0.0), 0.0)
    assert [r.id for r in s.schedule(0.0, ScheduleContext(mem)).admit] == [1]   # holds 900 pages
    s.add(req(2, inp=100, out=800, t=0.1), 0.1)                                  # q1: does not fit
    for step in range(1, 40):
        now = 0.1 + step * 0.1
        s.add(req(100 + step, inp=5, out=5, t=now), now)                         # q0: fits
        admitted = [r.id for r in s.schedule(now, ScheduleContext(mem)).admit]
        assert admitted == [100 + step]
        s.finish(100 + step, now, 5)
        mem.release(100 + step, now)
    assert not s.binding.compute_bound and s.binding.share == 0.0


def test_config_validation() -> None:
    assert MlqConfig().compute_fcfs == 0.3
    for bad in (dict(compute_fcfs=-0.1), dict(compute_fcfs=1.5), dict(compute_alpha=0.0)):
        with pytest.raises(ValueError):
            MlqConfig(**bad)
