"""Eviction policies: the paper's score on hand-worked numbers, LRU, FairShare, protection, refcounts."""

from __future__ import annotations

import pytest

from chameleon.core.adapters import AdapterSpec
from chameleon.core.cache import ChameleonCache, FairShareCache, LruCache, NoCache, make_cache


def spec(name: str, nbytes: int) -> AdapterSpec:
    return AdapterSpec(name, 8, nbytes, 1)


def filled(cache, now: float = 100.0):
    """a: big, used 3x long ago; b: small, used once recently; c: medium, used twice in between."""
    cache.insert(spec("a", 400), [1], 0.0)
    cache.insert(spec("b", 100), [2], 0.0)
    cache.insert(spec("c", 200), [3], 0.0)
    for t, name in [(10, "a"), (11, "a"), (12, "a"), (50, "c"), (60, "c"), (90, "b")]:
        cache.pin(name, t)
        cache.unpin(name, t)
    return cache


def test_chameleon_score_hand_worked():
    cache = filled(ChameleonCache())
    idle = list(cache.entries())
    sc = cache.scores(idle, 100.0)
    # frequency / 3, recency over [12, 90], size / 400
    assert sc["a"] == pytest.approx(0.45 * 1 + 0.10 * 0 + 0.45 * 1.0)
    assert sc["b"] == pytest.approx(0.45 / 3 + 0.10 * 1 + 0.45 * 0.25)
    assert sc["c"] == pytest.approx(0.45 * 2 / 3 + 0.10 * (60 - 12) / 78 + 0.45 * 0.5)
    order = [e.adapter_id for e in cache.eviction_order(100.0, set())]
    assert order == ["b", "c", "a"]  # small and rarely used first, big and frequent last


def test_fairshare_hand_worked_and_lru_order():
    fair = filled(FairShareCache())
    sc = fair.scores(list(fair.entries()), 100.0)
    assert sc["b"] == pytest.approx((1 / 3 + 1 + 0.25) / 3)
    assert sc["c"] == pytest.approx((2 / 3 + 48 / 78 + 0.5) / 3)
    assert [e.adapter_id for e in fair.eviction_order(100.0, set())] == ["b", "c", "a"]
    lru = filled(LruCache())
    assert [e.adapter_id for e in lru.eviction_order(100.0, set())] == ["a", "c", "b"]


def test_weights_decide_when_recency_competes_with_frequency():
    """p: used once, recently; q: used twice, long ago; same size.
    Chameleon: p = .45*.5 + .1*1 + .45 = .775 < q = .45 + 0 + .45 = .9, so p goes first.
    FairShare: p = (.5 + 1 + 1)/3 = .833 > q = (1 + 0 + 1)/3 = .667, so q goes first."""
    orders = []
    for cache in (ChameleonCache(), FairShareCache()):
        cache.insert(spec("p", 100), [1], 0.0)
        cache.insert(spec("q", 100), [2], 0.0)
        for t, name in [(0, "q"), (1, "q"), (50, "p")]:
            cache.pin(name, t)
            cache.unpin(name, t)
        orders.append([e.adapter_id for e in cache.eviction_order(60.0, set())])
    assert orders == [["p", "q"], ["q", "p"]]


def test_frequency_is_windowed():
    cache = filled(ChameleonCache(window_s=50.0))
    assert cache.frequency("a", 100.0) == 0  # uses at 10-12 fell out of the window
    assert cache.frequency("c", 100.0) == 2


def test_refcounted_never_offered_and_protected_go_last():
    cache = filled(ChameleonCache())
    cache.pin("b", 100.0)
    order = [e.adapter_id for e in cache.eviction_order(100.0, protected={"c"})]
    assert order == ["a", "c"]
    assert cache.idle_pages() == 2
    with pytest.raises(RuntimeError):
        cache.remove("b")
    cache.unpin("b", 101.0)
    with pytest.raises(RuntimeError):
        cache.unpin("b", 101.0)


def test_no_cache_keeps_only_queued():
    cache = NoCache()
    entry = cache.insert(spec("a", 1), [1], 0.0)
    assert cache.keep_idle(entry, {"a"}) and not cache.keep_idle(entry, set())
    assert ChameleonCache().keep_idle(entry, set())


def test_make_cache_names():
    assert [type(make_cache(n)).__name__ for n in ("chameleon", "lru", "fairshare", "none")] == \
        ["ChameleonCache", "LruCache", "FairShareCache", "NoCache"]
    with pytest.raises(ValueError, match="choose one of"):
        make_cache("lfu")
