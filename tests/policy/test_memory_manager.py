"""MemoryManager: atomic admission, eviction order, NoCache, prefetch, headroom, integrity."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon.core.adapters import AdapterSpec
from chameleon.core.headroom import HeadroomReport, HeadroomTarget
from tests.policy.helpers import memory, req

SPECS = [AdapterSpec("big", 64, 40_000, 40), AdapterSpec("mid", 16, 20_000, 20),
         AdapterSpec("small", 8, 5_000, 5)]


def test_admission_reserves_kv_for_max_new_and_pins_adapter():
    mem = memory(100, SPECS, block_size=4)
    adm = mem.try_admit(req(1, "mid", inp=10, max_new=7), 0.0)
    assert adm is not None and adm.load_adapter and not adm.hit
    assert len(adm.kv_pages) == 5  # ceil(17 / 4)
    assert len(adm.adapter_pages) == 20 and adm.evicted == []
    again = mem.try_admit(req(2, "mid", inp=4, max_new=4), 0.0)
    assert again is not None and again.hit and not again.load_adapter and again.adapter_pages == []
    assert mem.cache.get("mid").refcount == 2
    mem.check_integrity()
    mem.release(1, 1.0)
    mem.release(2, 1.0)
    assert "mid" in mem.cache and mem.cache.get("mid").refcount == 0  # stays as cache
    assert mem.stats()["hits"] == 1 and mem.stats()["misses"] == 1
    mem.check_integrity()


def test_refusal_is_atomic_and_evicts_nothing():
    mem = memory(50, SPECS)
    assert mem.try_admit(req(1, "mid", inp=5, max_new=5), 0.0) is not None  # 10 + 20 pages
    mem.release(1, 1.0)  # mid idle (20 pages), 30 free
    before = mem.stats()
    assert mem.try_admit(req(2, "big", inp=30, max_new=5), 2.0) is None  # needs 75 > 50
    assert "mid" in mem.cache and mem.stats()["free_pages"] == before["free_pages"]
    mem.check_integrity()


def test_idle_evicted_by_score_and_queued_protected_last():
    mem = memory(60, SPECS)
    for i, name in enumerate(["small", "mid"]):
        assert mem.try_admit(req(i, name, inp=1, max_new=1), float(i)) is not None
        mem.release(i, float(i))
    # free: 60 - 5 - 20 - 0 = 35; big + 2 KV = 42 -> 7 pages short
    adm = mem.try_admit(req(9, "big", inp=1, max_new=1), 5.0, queued_adapters={"small"})
    assert adm is not None and adm.evicted == ["mid"]  # small is protected by the queue
    assert "small" in mem.cache
    mem.check_integrity()


def test_no_cache_drops_at_refcount_zero_unless_queued():
    mem = memory(100, SPECS, cache="none")
    mem.try_admit(req(1, "mid"), 0.0, queued_adapters={"small"})
    mem.try_admit(req(2, "small"), 0.0, queued_adapters={"small"})
    mem.release(1, 1.0)
    mem.release(2, 1.0)
    assert "mid" not in mem.cache and "small" in mem.cache
    assert mem.take_offloads() == ["mid"] and mem.take_offloads() == []
    mem.set_queue_view(set())
    assert mem.prefetch([], 2.0) == []  # sweep drops the no longer wanted prefetched adapter
    assert "small" not in mem.cache and mem.take_offloads() == ["small"]
    mem.check_integrity()


def test_prefetch_uses_free_pages_only_and_keeps_reserve():
    mem = memory(50, SPECS)
    assert mem.try_admit(req(1, "small", inp=10, max_new=10), 0.0) is not None  # 25 used, 25 free
    loads = mem.prefetch(["small", None, "mid", "big"], 1.0, reserve_pages=4)
    assert loads == [("mid", mem.pool.adapter_pages("mid"))] and len(loads[0][1]) == 20
    assert "big" not in mem.cache
    assert mem.cache.get("mid").refcount == 0 and mem.stats()["prefetches"] == 1
    assert mem.try_admit(req(2, "mid", inp=1, max_new=1), 2.0).hit
    mem.check_integrity()


def test_admissible_means_fits_an_empty_pool():
    mem = memory(50, SPECS)
    assert mem.admissible(req(1, "big", inp=5, max_new=5))  # 10 + 40
    assert not mem.admissible(req(2, "big", inp=6, max_new=5))
    assert not mem.admissible(req(3, None, inp=40, max_new=11))


def test_adapter_fits_counts_idle_but_not_pinned():
    mem = memory(60, SPECS)
    mem.try_admit(req(1, "mid", inp=10, max_new=10), 0.0)  # 40 used
    assert not mem.adapter_fits("big") and mem.adapter_fits("small") and mem.adapter_fits(None)
    mem.release(1, 1.0)  # mid idle: 40 reclaimable + 20 free
    assert mem.adapter_fits("big")


def test_headroom_shrinks_and_grows_back():
    mem = memory(100, SPECS, block_size=1)
    mem.set_headroom(HeadroomTarget(1000, 0.0))
    mem.try_admit(req(1, "mid", inp=5, max_new=5), 0.0)
    mem.release(1, 1.0)  # 20 idle adapter pages, 80 free
    report = HeadroomReport(rank=0, free_device_bytes=0, pool_pages_total=101, pool_pages_used=21,
                            page_bytes=10, total_device_bytes=10_000, segment_pages=1)
    mem.on_headroom(report, 2.0)  # 1000 bytes missing = 100 pages: the budget drops to page 0 alone
    assert mem.pool.limit == 1 and "mid" not in mem.cache and mem.take_offloads() == ["mid"]
    assert mem.try_admit(req(2, None, inp=1, max_new=1), 3.0) is None  # no new page until it recovers
    assert mem.resize_request() == 1  # nothing lives above page 0: the shards may release the rest
    mem.resized(1)
    roomy = HeadroomReport(0, 5000, 101, 1, 10, total_device_bytes=10_000, pool_pages_allocated=1,
                           segment_pages=1)
    mem.on_headroom([roomy, HeadroomReport(1, 5000, 101, 4, 10, total_device_bytes=10_000,
                                           pool_pages_allocated=1, segment_pages=1)], 4.0)
    assert mem.withheld == 3  # rank 1 sees 3 pages in use beyond reserved page 0 that the router does not
    assert mem.pool.limit == 1 and mem.resize_request() == 101  # grow: the shards first
    mem.resized(101)
    assert mem.pool.limit == 101
    assert mem.try_admit(req(3, "mid", inp=5, max_new=5), 5.0) is not None
    mem.check_integrity()


ACTIONS = st.lists(st.tuples(st.sampled_from(["admit", "release", "prefetch", "headroom"]),
                             st.integers(0, 11), st.sampled_from([None, "big", "mid", "small"]),
                             st.integers(1, 30)), max_size=50)


@settings(max_examples=40, deadline=None)
@given(ACTIONS, st.sampled_from(["chameleon", "lru", "fairshare", "none"]))
def test_pinned_adapters_never_evicted_and_integrity_holds(actions, policy):
    mem = memory(80, SPECS, cache=policy)
    live: dict[int, str | None] = {}
    for now, (act, rid, adapter, n) in enumerate(actions):
        queued = {"small"} if rid % 2 else set()
        if act == "admit" and rid not in live:
            adm = mem.try_admit(req(rid, adapter, inp=n, max_new=n), float(now), queued)
            if adm is not None:
                live[rid] = adapter
                assert not set(adm.evicted) & set(live.values())
        elif act == "release":
            mem.release(rid, float(now))
            live.pop(rid, None)
        elif act == "prefetch":
            mem.prefetch([adapter, "small"], float(now), reserve_pages=n)
        else:
            mem.on_headroom(HeadroomReport(0, 10**9, 81, mem.pool.num_pages - mem.pool.free_pages() + n % 3,
                                           4096), float(now))
        for a in set(live.values()) - {None}:
            assert a in mem.cache and mem.cache.get(a).refcount > 0
        mem.take_offloads()
        mem.check_integrity()
