from __future__ import annotations

from dataclasses import replace

import pytest

from chameleon.core.sched import FifoScheduler
from chameleon.sim.config import SimConfig
from chameleon.sim.cost import CostModel
from chameleon.sim.engine import Simulator
from chameleon.sim.profile import Profile
from chameleon.sim.runner import POLICIES
from chameleon.workload import LengthScale, WorkloadOptions, build_workload, make_population
from tests.sim.conftest import synthetic_records

POP = make_population(20)


def _small_memory(a40: Profile, pages: int = 260) -> Profile:
    """The A40 profile with a pool of about `pages` pages, so KV and adapters contend."""
    device = a40.weights_bytes + a40.activation_reserve_bytes + pages * a40.page_bytes
    return replace(a40, device_memory_bytes=device)


def _items(n: int, rate: float, seed: int = 0):
    return build_workload(synthetic_records(n, seed), POP, WorkloadOptions(rate=rate, seed=seed))


def _run(profile: Profile, policy: str, items, **cfg):
    sched, cache = POLICIES[policy]
    sim = Simulator(items, POP, profile, SimConfig(scheduler=sched, cache=cache, **cfg))
    return sim, sim.run()


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_invariants_under_memory_pressure(a40: Profile, policy: str) -> None:
    profile = _small_memory(a40)
    items = _items(250, rate=12.0)
    sim, res = _run(profile, policy, items)
    cost = CostModel(profile)
    assert res.finished == len(items)
    for w in items:
        rank = 0 if w.adapter_id is None else sim.rank[w.adapter_id]
        assert res.ttft[w.id] >= res.load_s[w.id] + cost.prefill_time(w.input_tokens, rank) - 1e-12
        assert res.e2e[w.id] >= res.ttft[w.id] + (w.output_tokens - 1) * profile.weight_read_s - 1e-9
    sim.memory.check_integrity()
    assert sim.memory.pool.used_by_tenant()["kv"] == 0
    assert not sim.running and sim.sched.num_waiting() == 0
    assert res.memory_stats["evictions"] > 0 or policy.startswith(("fifo", "sjf", "chameleon-nocache"))


def test_deterministic_under_seed(a40: Profile) -> None:
    profile = _small_memory(a40)
    one = _run(profile, "chameleon", _items(200, 10.0, seed=4))[1]
    two = _run(profile, "chameleon", _items(200, 10.0, seed=4))[1]
    other = _run(profile, "chameleon", _items(200, 10.0, seed=5))[1]
    assert one.ttft == two.ttft and one.e2e == two.e2e and one.bytes_loaded == two.bytes_loaded
    assert one.ttft != other.ttft


def test_cache_avoids_reloads(a40: Profile) -> None:
    items = _items(300, rate=6.0)
    _, nocache = _run(a40, "fifo", items)
    _, cached = _run(a40, "chameleon-nosched", items)
    assert cached.memory_stats["hit_rate"] > nocache.memory_stats["hit_rate"]
    assert cached.bytes_loaded <= sum(a40.bytes_for_rank(a.rank) for a in POP)   # each adapter once
    assert sum(cached.ttft) < sum(nocache.ttft)


def test_unloaded_single_request_matches_cost_model(a40: Profile) -> None:
    items = _items(1, rate=1.0)
    sim, res = _run(a40, "fifo", items)
    w = items[0]
    rank = sim.rank[w.adapter_id]
    assert res.ttft[0] == pytest.approx(CostModel(a40).unloaded_ttft(rank, w.input_tokens))
    assert res.loads == 1 and res.bytes_loaded == a40.bytes_for_rank(rank)


def test_request_larger_than_pool_is_refused(a40: Profile) -> None:
    profile = _small_memory(a40, pages=40)
    items = build_workload(synthetic_records(5), POP, WorkloadOptions(rate=1.0, scale=LengthScale(10, 10)))
    with pytest.raises(ValueError, match="length-scale"):
        Simulator(items, POP, profile, SimConfig())


def test_unknown_adapter_is_refused(a40: Profile) -> None:
    items = _items(3, rate=1.0)
    with pytest.raises(ValueError, match="unknown adapter"):
        Simulator(items, make_population(5), a40, SimConfig())


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="noisy"):
        SimConfig(predictor="noisy:x")
    with pytest.raises(ValueError):
        SimConfig(predictor="psychic")
    with pytest.raises(ValueError):
        SimConfig(max_idle_skip_s=0)


class _SquashOnce(FifoScheduler):
    """FIFO that squashes its oldest running request once, on the first call that admits nothing."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.victim: int | None = None

    def schedule(self, now, ctx):
        plan = super().schedule(now, ctx)
        if self.victim is None and not plan.admit and len(self._running) >= 2:
            req = next(iter(self._running.values()))
            self.victim = req.id
            self._squash(req, now, plan)
        return plan

    def _requeue(self, req) -> None:
        self._queue.appendleft(req)


def test_squashed_request_is_freed_requeued_and_finishes(a40: Profile) -> None:
    profile = _small_memory(a40, pages=120)
    items = _items(120, rate=30.0)
    sim = Simulator(items, POP, profile, SimConfig(scheduler="fifo", cache="chameleon"))
    sim.sched = _SquashOnce(limits=sim.sched.limits)
    res = sim.run()
    assert sim.sched.victim is not None and res.squashes == 1
    assert res.finished == len(items)
    victim = items[[w.id for w in items].index(sim.sched.victim)]
    assert res.e2e[victim.id] >= res.ttft[victim.id] > 0
    sim.memory.check_integrity()
    assert sim.memory.pool.used_by_tenant()["kv"] == 0
