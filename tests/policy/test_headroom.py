"""The headroom loop's pure core: target parsing, the budget rule with hysteresis, the allocator's
limit (lowest ids first, pages out of service), and MemoryManager shrinking/growing the cache."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon.core.adapters import AdapterSpec
from chameleon.core.allocator import PagePool
from chameleon.core.elastic import ElasticPool
from chameleon.core.headroom import HeadroomPolicy, HeadroomReport, HeadroomTarget
from tests.policy.helpers import memory, req

GIB = 1 << 30
SPECS = [AdapterSpec("a", 8, 4 * 4096, 4), AdapterSpec("b", 8, 4 * 4096, 4), AdapterSpec("c", 8, 4 * 4096, 4)]


def rep(free: int, allocated: int = 0, *, rank: int = 0, total: int = 1000, used: int = 1, page: int = 1,
        seg: int = 4, pages: int = 65) -> HeadroomReport:
    return HeadroomReport(rank, free, pages, used, page, total_device_bytes=total,
                          pool_pages_allocated=allocated, segment_pages=seg)


@pytest.mark.parametrize(("text", "nbytes", "fraction"), [
    ("0.1", 0, 0.1), ("2GiB", 2 * GIB, 0.0), ("512M", 512_000_000, 0.0), ("1073741824", GIB, 0.0),
    ("0", 0, 0.0), (".25", 0, 0.25), ("64mi", 64 << 20, 0.0), ("1.5G", 1_500_000_000, 0.0)])
def test_target_parses_bytes_and_fractions(text, nbytes, fraction):
    t = HeadroomTarget.parse(text)
    assert (t.nbytes, t.fraction) == (nbytes, fraction)


@pytest.mark.parametrize("text", ["1.5", "-1", "lots", "2 parsecs", "", "0.1.2"])
def test_bad_target_is_a_clear_error(text):
    with pytest.raises(ValueError, match="headroom"):
        HeadroomTarget.parse(text)


def test_target_is_the_larger_of_bytes_and_fraction():
    assert HeadroomTarget(100, 0.5).for_total(1000) == 500
    assert HeadroomTarget(700, 0.5).for_total(1000) == 700
    assert HeadroomTarget().for_total(1000) == 50  # the default: 5% of total


def test_budget_shrinks_by_whole_segments_then_holds_in_the_dead_band():
    policy = HeadroomPolicy(HeadroomTarget(100, 0.0), num_pages=64)
    assert policy.budget([rep(95, 64)], 64, 0.0) == 56  # 5 pages short -> give back 2 whole segments of 4
    # after the release free rose by 8: inside [target, target + margin] -> nothing changes
    assert policy.budget([rep(103, 56)], 56, 1.0) == 56
    # the same short report repeated before the shards released gives the same answer (idempotent)
    assert policy.budget([rep(95, 64)], 56, 2.0) == 56
    # plenty of room: grow back, capped at the pool
    assert policy.budget([rep(900, 56)], 56, 3.0) == 64
    # once the growth phase is over (settle_s after the growth), growth is triggered beyond target +
    # margin (at least 2 segments and a quarter of the target) ...
    assert policy.budget([rep(125, 56)], 56, 10.0) == 56
    # ... and then leaves target + one segment free: 100 + 4 of 130 -> 24 more pages, cut to a segment
    assert policy.budget([rep(130, 32)], 32, 20.0) == 56


def test_growth_phase_follows_free_memory_that_is_still_rising():
    """A co-tenant exits slowly: the first growth is sized from a reading taken while it still held
    memory. While the phase lasts, a rise of more than two segments over the target grows on; after it,
    the same reading sits in the dead band and nothing moves; a shrink ends the phase at once."""
    policy = HeadroomPolicy(HeadroomTarget(100, 0.0), num_pages=64, settle_s=3.0)
    assert policy.budget([rep(130, 32)], 32, 0.0) == 56  # the co-tenant half gone: 24 pages more
    assert policy.budget([rep(115, 56)], 56, 1.0) == 64  # the rest freed: 115 > 100 + 2 x 4 -> grow on
    fresh = HeadroomPolicy(HeadroomTarget(100, 0.0), num_pages=64, settle_s=3.0)
    assert fresh.budget([rep(115, 56)], 56, 1.0) == 56  # no phase: 115 is inside the dead band [100, 125]
    assert policy.budget([rep(130, 32)], 32, 10.0) == 56
    assert policy.budget([rep(115, 56)], 56, 13.5) == 56  # the phase is over: dead band again
    assert policy.budget([rep(130, 32)], 32, 20.0) == 56
    assert policy.budget([rep(99, 56)], 56, 20.5) == 52  # short: shrink, the phase ends
    assert policy.budget([rep(115, 52)], 52, 21.0) == 52
    assert policy.budget([rep(107, 52)], 52, 21.0) == 52  # in the phase, not above target + 2 segments


def test_budget_takes_the_tightest_rank_and_ignores_empty_reports():
    policy = HeadroomPolicy(HeadroomTarget(0, 0.1), num_pages=64)
    two = [rep(900, 64, rank=0), rep(90, 64, rank=1)]  # rank 1: 10 short of 100
    assert policy.budget(two, 64) == 52
    assert policy.budget([HeadroomReport(0, 0, 64, 1, 0)], 64) == 64  # no page size/total: no verdict


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_no_oscillation_when_the_co_tenant_is_steady(cotenant, jitter):
    """A machine of 200 bytes: the pool's allocated pages are used, a co-tenant holds `cotenant`
    bytes, small noise on top. Once settled, the budget never moves back and forth."""
    policy = HeadroomPolicy(HeadroomTarget(60, 0.0), num_pages=100)
    allocated, history = 100, []
    for now, noise in enumerate([0, 0, 0, *jitter]):
        free = max(200 - allocated - cotenant - 40 + noise, 0)
        allocated = policy.budget([rep(free, allocated, total=200, seg=4, pages=100)], allocated, now)
        history.append(allocated)
    settled = history[3:]
    changes = sum(1 for x, y in itertools.pairwise(settled) if x != y)
    assert changes <= 1


def test_allocator_hands_out_lowest_ids_and_parks_pages_above_the_limit():
    pool = PagePool(13, reserved=(0,))
    assert pool.alloc_kv(1, 3) == [1, 2, 3]
    assert pool.alloc_adapter("a", 4) == [4, 5, 6, 7]
    pool.free_kv(1)
    assert pool.alloc_kv(2, 2) == [1, 2]  # the lowest free ids first
    pool.set_limit(6)  # 8..12 free -> out of service; adapter a (4..7) still valid
    assert pool.free_pages() == 1 and pool.high_water() == 8 and pool.owners_from(6) == ([], ["a"])
    pool.check_integrity()
    pool.free_adapter("a")  # 4, 5 back to the heap; 6, 7 stay out of service
    assert pool.free_pages() == 3 and pool.high_water() == 3
    pool.check_integrity()
    pool.set_limit(13)
    assert pool.free_pages() == 10
    pool.check_integrity()


def test_integrity_catches_a_free_page_above_the_limit():
    pool = PagePool(8)
    pool.set_limit(4)
    pool._free.append(6)
    with pytest.raises(RuntimeError, match="out of service"):
        pool.check_integrity()


def test_elastic_pool_counts_pages_given_back_and_regrown():
    el = ElasticPool(64)
    el.learn(64, 8)
    el.budget = 20
    assert el.resize_request(high_water=10) == 24  # rounded up to a whole segment
    assert el.resize_request(high_water=30) == 32  # never below a page still in use
    el.resized(24)
    assert (el.allocated, el.pages_given_back, el.shrink_events) == (24, 40, 1)
    assert el.resize_request(high_water=10) is None
    el.budget = 64
    assert el.resize_request(high_water=10) == 64
    el.resized(64)
    assert (el.pages_regrown, el.grow_events, el.resize_events) == (40, 1, 2)


def test_shrink_evicts_idle_by_score_never_in_use_or_queued_and_relocates_the_rest():
    mem = memory(20, SPECS)  # pages 1..20
    mem.set_headroom(HeadroomTarget(100, 0.0))
    for rid, aid in enumerate(["a", "b", "c"]):  # kv 1-2, a 3-6; kv 7-8, b 9-12; kv 13-14, c 15-18
        mem.try_admit(req(rid, aid, inp=1, max_new=1), float(rid))
    mem.release(0, 10.0)  # a idle
    mem.release(2, 11.0)  # c idle; b still runs (in use)
    mem.set_queue_view({"c"})  # a queued request wants c: protected
    pages_before = {e.adapter_id: list(e.pages) for e in mem.cache.entries()}
    assert max(pages_before["c"]) > max(pages_before["a"])
    mem.on_headroom(rep(90, 21, total=1000, seg=1, pages=21, used=15), 12.0)  # 10 pages short -> limit 11
    assert mem.pool.limit == 11
    # b (in use) and c (queued for) stay where they are; a lies below the limit and stays
    assert {e.adapter_id for e in mem.cache.entries()} == {"a", "b", "c"}
    assert mem.take_relocations() == [] and mem.take_offloads() == []
    mem.set_queue_view(set())  # nobody waits for c any more: it must move below the limit or go
    mem.on_headroom(rep(90, 21, total=1000, seg=1, pages=21, used=15), 13.0)
    assert "c" not in mem.cache or max(mem.cache.get("c").pages) < 11
    assert len(mem.cache) == 2  # one of the idle two went (the lower score), the other moved down
    assert "b" in mem.cache and mem.cache.get("b").refcount == 1
    mem.check_integrity()


def test_relocation_moves_a_high_idle_adapter_into_free_low_pages():
    mem = memory(16, SPECS)
    mem.set_headroom(HeadroomTarget(100, 0.0))
    mem.try_admit(req(1, None, inp=8, max_new=0), 0.0)  # kv 1..8
    mem.try_admit(req(2, "a", inp=1, max_new=0), 1.0)  # kv 9, a 10..13
    mem.release(1, 2.0)
    mem.release(2, 3.0)  # a idle at 10..13; 1..9 free
    mem.on_headroom(rep(92, 17, total=1000, seg=1, pages=17, used=5), 4.0)  # 8 short -> limit 9
    moved = mem.take_relocations()
    assert moved == [("a", [1, 2, 3, 4])] and mem.take_offloads() == []
    assert mem.resize_request() == 9
    mem.check_integrity()


def test_a_running_request_above_the_limit_drains_before_the_release():
    mem = memory(16, SPECS)
    mem.set_headroom(HeadroomTarget(100, 0.0))
    mem.try_admit(req(1, None, inp=4, max_new=0), 0.0)  # 1..4
    mem.try_admit(req(2, None, inp=8, max_new=0), 0.0)  # 5..12
    mem.release(1, 1.0)
    mem.on_headroom(rep(92, 17, total=1000, seg=4, pages=17, used=9), 2.0)  # 8 short -> budget 8
    assert mem.pool.limit == 8
    assert mem.resize_request() == 16  # request 2 still holds pages up to 12: its whole segment stays
    assert mem.try_admit(req(3, None, inp=8, max_new=0), 3.0) is None  # only 1..4 free below the limit
    assert mem.admissible(req(3, None, inp=8, max_new=0))  # it waits, it is not rejected
    mem.release(2, 4.0)
    assert mem.resize_request() == 8
    mem.resized(8)
    assert mem.stats()["pages_given_back"] == 9
    mem.check_integrity()


def test_no_headroom_target_means_no_resize():
    mem = memory(16, SPECS)
    mem.on_headroom(rep(0, 17, total=1000, seg=1, pages=17), 0.0)
    assert mem.pool.limit == 17 and mem.resize_request() is None


MOVES = st.lists(st.tuples(st.sampled_from(["admit", "release", "pressure", "resize"]), st.integers(0, 7),
                           st.sampled_from([None, "a", "b", "c"]), st.integers(0, 120)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(MOVES)
def test_integrity_under_random_pressure(moves):
    """Random admissions, releases, headroom reports and confirmed resizes: the allocator and cache
    stay consistent, an adapter in use is never evicted or moved, and no admission gets a page at or
    above the limit."""
    mem = memory(40, SPECS)
    mem.set_headroom(HeadroomTarget(100, 0.0))
    live: dict[int, str | None] = {}
    for now, (act, rid, adapter, n) in enumerate(moves):
        mem.set_queue_view({"c"} if rid % 3 == 0 else set())  # sometimes c is wanted: protected
        if act == "admit" and rid not in live:
            adm = mem.try_admit(req(rid, adapter, inp=1 + n % 5, max_new=1), float(now))
            if adm is not None:
                live[rid] = adapter
                assert all(p < mem.pool.limit for p in adm.kv_pages + adm.adapter_pages)
        elif act == "release" and rid in live:
            mem.release(rid, float(now))
            del live[rid]
        elif act == "pressure":
            pinned = {a: list(mem.cache.get(a).pages) for a in set(live.values()) if a is not None}
            mem.on_headroom(rep(n, mem.elastic.allocated, total=1000, seg=4, pages=41), float(now))
            for a, pages in pinned.items():
                assert a in mem.cache and mem.cache.get(a).pages == pages
            mem.take_offloads()
            mem.take_relocations()
        elif act == "resize":
            want = mem.resize_request()
            if want is not None:
                assert want >= mem.pool.high_water()
                mem.resized(want)
        mem.check_integrity()


def test_an_idle_adapter_above_the_limit_frees_nothing_for_an_admission():
    """A queued-for adapter stays above a shrunk limit; an admission counts only its pages below the
    limit as reclaimable (the others leave service when freed), so it never over-promises."""
    mem = memory(20, SPECS)
    mem.set_headroom(HeadroomTarget(100, 0.0))
    mem.try_admit(req(1, None, inp=12, max_new=0), 0.0)  # kv 1..12
    mem.try_admit(req(2, "a", inp=1, max_new=0), 1.0)  # kv 13, a 14..17
    mem.release(2, 2.0)
    mem.set_queue_view({"a"})  # protected: stays above the limit
    mem.on_headroom(rep(95, 21, total=1000, seg=1, pages=21, used=17), 3.0)  # 5 short -> limit 16
    assert mem.pool.limit == 16 and "a" in mem.cache and mem.pool.free_pages() == 1  # page 13
    assert not mem.can_admit(req(3, None, inp=4, max_new=0))  # 1 free + a's 14, 15 = 3 < 4
    assert mem.try_admit(req(3, None, inp=4, max_new=0), 4.0) is None  # refused, not a crash
    adm = mem.try_admit(req(4, None, inp=3, max_new=0), 5.0)
    assert adm is not None and adm.evicted == ["a"] and sorted(adm.kv_pages) == [13, 14, 15]
    mem.check_integrity()
