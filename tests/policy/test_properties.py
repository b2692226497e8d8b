"""Property tests of the schedulers driven by a minimal engine loop over the real memory manager."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon.core.adapters import AdapterSpec
from chameleon.core.predictor import NoisyOraclePredictor, OraclePredictor
from chameleon.core.sched import ChameleonScheduler, MlqConfig, make_scheduler
from tests.policy.helpers import Engine, adapter_specs, memory, req

ADAPTERS = [None] + [s.adapter_id for s in adapter_specs()]
request_st = st.tuples(st.sampled_from(ADAPTERS), st.integers(1, 40), st.integers(1, 30), st.integers(1, 30))


def build(rid: int, spec: tuple) -> object:
    adapter, inp, max_new, out = spec
    return req(rid, adapter, inp=inp, max_new=max_new, out=min(out, max_new))


# Same ids as adapter_specs() but some adapters nearly as big as the pool: exercises bypass and squash.
BIG = [AdapterSpec(s.adapter_id, s.rank, s.nbytes, [1, 2, 40, 60][i % 4])
       for i, s in enumerate(adapter_specs())]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(request_st, st.integers(0, 3), st.booleans()), min_size=1, max_size=60),
       st.sampled_from(["chameleon", "static4"]), st.integers(80, 300), st.booleans())
def test_quotas_never_negative_and_always_returned(arrivals, name, pages, big_adapters):
    cfg = {"first_refresh_requests": 6, "refresh_requests": 10, "t_refresh_s": 0.5}
    sched = make_scheduler(name, predictor=NoisyOraclePredictor(0.6, seed=1), **cfg)
    eng = Engine(sched, memory(pages, BIG if big_adapters else None))
    for rid, (spec, gap, cancel) in enumerate(arrivals):
        eng.add(build(rid, spec))
        for _ in range(gap):
            eng.step()
            assert min(sched.ledger.used) >= 0
            sched.ledger.check()
            eng.mem.check_integrity()
        if cancel and rid % 3 == 0:
            victim = (rid * 7) % (rid + 1)
            if sched.cancel(victim, eng.now):
                eng.running.pop(victim, None)
                eng.mem.release(victim, eng.now)
    for r in sched.waiting():
        assert sched.cancel(r.id, eng.now)
    eng.drain()
    assert sched.ledger.used == [0] * len(sched.ledger.used)
    assert sched.num_waiting() == 0 and not sched.running()
    assert eng.mem.stats()["kv_pages"] == 0
    eng.mem.check_integrity()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(request_st, st.integers(3, 6)), min_size=10, max_size=50),
       st.sampled_from(["chameleon", "static4", "fifo"]))
def test_no_starvation_under_steady_load_below_capacity(arrivals, name):
    """At most one arrival per 3 iterations, each served in <= 30: at most 10 run at once, each
    holding <= 70 KV pages + its adapter; 1000 pages hold them all. Every request must be admitted
    within a bounded number of iterations of its arrival."""
    sched = make_scheduler(name, predictor=OraclePredictor(), first_refresh_requests=8) \
        if name != "fifo" else make_scheduler(name)
    eng = Engine(sched, memory(1000))
    arrived: dict[int, int] = {}
    for rid, (spec, gap) in enumerate(arrivals):
        eng.add(build(rid, spec))
        arrived[rid] = eng.iteration
        for _ in range(gap):
            eng.step()
    eng.drain()
    waits = [eng.admitted_at_iter[rid] - arrived[rid] for rid in arrived]
    assert max(waits) <= 40


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(request_st, st.integers(0, 2)), min_size=1, max_size=60), st.integers(40, 200))
def test_fifo_order_inside_each_queue(arrivals, pages):
    cfg = MlqConfig(first_refresh_requests=5, refresh_requests=12, bypass=False)
    sched = ChameleonScheduler(cfg, predictor=OraclePredictor())
    eng = Engine(sched, memory(pages))
    fifo = make_scheduler("fifo")
    feng = Engine(fifo, memory(pages))
    order: list[int] = []
    for rid, (spec, gap) in enumerate(arrivals):
        eng.add(build(rid, spec))
        feng.add(build(rid, spec))
        for _ in range(gap + 1):
            admitted = eng.step()
            waiting = sched.waiting()
            for r in admitted:
                assert all(w.seq > r.seq for w in waiting if w.queue == r.queue)
            for q in set(w.queue for w in waiting):
                seqs = [w.seq for w in waiting if w.queue == q]
                assert seqs == sorted(seqs)
            order += [r.seq for r in feng.step()]
    assert order == sorted(order)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(request_st, st.booleans()), min_size=1, max_size=80), st.integers(1, 20))
def test_sjf_limited_waiting_view_matches_full_order(items, limit):
    sched = make_scheduler("sjf", predictor=OraclePredictor())
    for rid, (spec, cancel_prev) in enumerate(items):
        sched.add(build(rid, spec), 0.0)
        if cancel_prev and rid:
            sched.cancel(rid - 1, 0.0)
    full = sched.waiting()
    sizes = [r.predicted_output + r.input_tokens for r in full]
    assert sizes == sorted(sizes)
    assert sched.waiting(limit) == full[:limit]
