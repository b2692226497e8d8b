"""chameleon.core.affinity: tiers, queue depth, bounded load, stickiness and the local bookkeeping."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chameleon.core.affinity import (
    AffinityConfig,
    AffinityRouter,
    ReplicaView,
    est_ttft,
    rank,
    rendezvous,
    tier,
)

CFG = AffinityConfig(load_factor=1.25, load_slack=2)


def ids(views: list[ReplicaView]) -> list[str]:
    return [v.replica_id for v in views]


def test_tiers_resident_then_pending_then_free_pages_then_evict():
    resident = ReplicaView("r0", resident=frozenset({"a"}))
    pending = ReplicaView("r1", pending=frozenset({"a"}))
    roomy = ReplicaView("r2", free_pages=8)
    full = ReplicaView("r3", free_pages=1)
    assert [tier(v, "a", 4) for v in (resident, pending, roomy, full)] == [0, 1, 2, 3]
    assert ids(rank([full, roomy, pending, resident], "a", CFG, pages=4)) == ["r0", "r1", "r2", "r3"]
    assert tier(full, None, 4) == 0  # the base model is everywhere


def test_queue_depth_of_the_request_class_breaks_ties_before_total_load():
    # same tier; r0 has more waiting in total but fewer in the classes up to class 0
    r0 = ReplicaView("r0", resident=frozenset({"a"}), queue_lengths=(0, 3), running=1)
    r1 = ReplicaView("r1", resident=frozenset({"a"}), queue_lengths=(1, 0), running=1)
    assert ids(rank([r1, r0], "a", AffinityConfig(load_slack=10), qclass=0)) == ["r0", "r1"]
    assert ids(rank([r0, r1], "a", AffinityConfig(load_slack=10))) == ["r1", "r0"]


def test_bounded_load_spreads_a_hot_adapter():
    hot = ReplicaView("r0", resident=frozenset({"a"}), queue_lengths=(6,), running=6)
    cold = ReplicaView("r1", queue_lengths=(0,), running=2)
    # mean (12 + 2 + 1) / 2 = 7.5, bound max(9.4, 9.5): r0 at 13 is over it
    assert ids(rank([hot, cold], "a", CFG)) == ["r1", "r0"]
    light = ReplicaView("r0", resident=frozenset({"a"}), running=3)
    assert ids(rank([light, cold], "a", CFG)) == ["r0", "r1"]  # under the bound affinity wins


def test_every_router_picks_the_same_home_for_a_new_adapter():
    views = [ReplicaView(f"r{i}", free_pages=10) for i in range(8)]
    first = ids(rank(views, "new", CFG))
    assert ids(rank(list(reversed(views)), "new", CFG)) == first
    assert first[0] == max(views, key=lambda v: rendezvous("new", v.replica_id)).replica_id
    homes = {ids(rank(views, f"ad{i}", CFG))[0] for i in range(40)}
    assert len(homes) > 4  # different adapters get different homes


def test_router_counts_what_it_sent_until_the_next_report():
    router = AffinityRouter(CFG)
    for r in ("r0", "r1"):
        router.update(ReplicaView(r, free_pages=10, queue_lengths=(0,)))
    home = router.choose(["r0", "r1"], "a")[0]
    router.assigned(home, "a")
    assert "a" in router.view(home).pending and router.view(home).waiting == 1
    assert router.choose(["r0", "r1"], "a")[0] == home  # queued there now: tier 1
    for _ in range(6):
        router.assigned(home, "a")
    other = next(r for r in ("r0", "r1") if r != home)
    assert router.choose(["r0", "r1"], "a")[0] == other  # 7 sent: over the bound
    router.update(ReplicaView(home, resident=frozenset({"a"}), running=1))
    assert router.view(home).waiting == 0 and router.view(home).pending == frozenset()


def test_stats_round_trip_and_tolerate_garbage():
    view = ReplicaView("r0", frozenset({"a", "b"}), frozenset({"c"}), 12, (1, 2, 0), 3)
    assert ReplicaView.from_stats("r0", view.to_stats()) == view
    junk = ReplicaView.from_stats("r9", {"resident": "x", "free_pages": float("nan"), "queue_lengths": [-1]})
    assert junk == ReplicaView("r9", queue_lengths=(0,))


def test_a_report_measured_before_a_request_was_sent_does_not_erase_it():
    router = AffinityRouter(CFG)
    router.update(ReplicaView("r0", free_pages=10), as_of=0.0)
    router.assigned("r0", "a", now=5.0)
    router.update(ReplicaView("r0", free_pages=10), as_of=4.0)  # measured before the request arrived
    assert "a" in router.view("r0").pending and router.view("r0").waiting == 1
    router.update(ReplicaView("r0", resident=frozenset({"a"})), as_of=6.0)
    assert router.view("r0").pending == frozenset() and router.view("r0").waiting == 0


def test_completion_moves_a_request_from_load_to_residency():
    router = AffinityRouter(CFG)
    router.update(ReplicaView("r0"), as_of=0.0)
    router.assigned("r0", "a", now=1.0, key="k1")
    router.assigned("r0", None, now=1.0, key="k2")
    assert router.view("r0").waiting == 2
    router.completed("r0", "k1", now=2.0)
    router.completed("r0", "unknown", now=2.0)
    view = router.view("r0")
    assert view.waiting == 1 and view.resident == {"a"} and view.pending == frozenset()
    router.update(ReplicaView("r0"), as_of=3.0)  # the report after it knows better (evicted, say)
    assert router.view("r0") == ReplicaView("r0")


def costed(rid: str, **kw) -> ReplicaView:
    """A replica that reports costs: 100-token requests at 1 ms/token (0.1 s), 50 ms loads, 20 ms steps."""
    return ReplicaView(rid, prefill_s_per_token=0.001, tokens_per_request=100, load_s=0.05, step_s=0.02, **kw)


def test_est_ttft_adds_the_work_ahead_the_own_prefill_and_a_weighted_load():
    v = costed("r0", resident=frozenset({"a"}), pending=frozenset({"b"}), queue_lengths=(1, 2), running=1)
    # busy step 0.02 + 1 waiting ahead in class 0 (0.1) + the load of b ahead (0.05) + own prefill 0.1
    assert est_ttft(v, "a", qclass=0) == pytest.approx(0.27)
    assert est_ttft(v, "b", qclass=0) == pytest.approx(0.27)  # queued there already: no second load
    assert est_ttft(v, "c", qclass=0, miss_weight=3) == pytest.approx(0.27 + 0.15)
    assert est_ttft(v, "a") == pytest.approx(0.47)  # class unknown: all 3 waiting requests are ahead
    assert est_ttft(costed("r1"), "c", tokens=400) == pytest.approx(0.4 + 0.05)  # idle: no step to wait for


def test_affinity_holds_while_a_load_costs_more_than_the_queue_difference_and_spreads_after():
    cfg = AffinityConfig(load_slack=10, miss_weight=2)  # a miss is charged 2 x 50 ms
    idle = costed("r1")  # 0.1 prefill + 0.1 charged load = 0.2
    short = costed("r0", resident=frozenset({"a"}), running=1)  # 0.02 + 0.1 = 0.12
    deep = costed("r0", resident=frozenset({"a"}), queue_lengths=(2,), running=1)  # 0.02 + 0.2 + 0.1 = 0.32
    assert ids(rank([idle, short], "a", cfg)) == ["r0", "r1"]
    assert ids(rank([idle, deep], "a", cfg)) == ["r1", "r0"]
    heavier = AffinityConfig(load_slack=10, miss_weight=5)  # charged 0.25: the load outweighs 2 requests
    assert ids(rank([idle, deep], "a", heavier)) == ["r0", "r1"]
    tier_first = AffinityConfig(load_slack=10, miss_weight=0)  # pure affinity within the bound
    assert ids(rank([idle, deep], "a", tier_first)) == ["r0", "r1"]
    # the load bound still comes first: r0 over max(1.25 x mean, mean + 1) loses whatever the costs
    tight = AffinityConfig(load_slack=1, miss_weight=100)
    assert ids(rank([idle, costed("r0", resident=frozenset({"a"}), running=3)], "a", tight)) == ["r1", "r0"]


def test_costs_count_only_when_every_replica_reports_them():
    cfg = AffinityConfig(load_slack=10, miss_weight=2)
    deep = costed("r0", resident=frozenset({"a"}), queue_lengths=(2,), running=1)
    assert ids(rank([ReplicaView("r1"), deep], "a", cfg)) == ["r0", "r1"]  # r1 has no costs: tier first
    assert not ReplicaView("r1", load_s=0.1).costed and costed("r1").costed


def test_costs_round_trip_through_stats_and_garbage_reads_as_unknown():
    view = costed("r0", resident=frozenset({"a"}), queue_lengths=(1,))
    assert ReplicaView.from_stats("r0", view.to_stats()) == view
    bad = ReplicaView.from_stats("r0", {"load_s": True, "step_s": float("inf"), "prefill_s_per_token": -1,
                                        "tokens_per_request": "100"})
    assert bad == ReplicaView("r0")
    with pytest.raises(ValueError):
        AffinityConfig(miss_weight=-1)


def test_noise_in_the_measured_rates_does_not_decide_where_a_new_adapter_lives():
    cfg = AffinityConfig(load_slack=10, miss_weight=8)
    fast = replace(costed("r0", free_pages=50), prefill_s_per_token=0.0009, load_s=0.045)
    slow = replace(costed("r1", free_pages=50), prefill_s_per_token=0.0011, load_s=0.055)
    homes = {ids(rank([fast, slow], f"ad{i}", cfg))[0] for i in range(20)}
    assert homes == {"r0", "r1"}  # idle replicas tie: the rendezvous hash splits new adapters
    # queued work is still priced at each replica's own rate: 3 waiting requests at 1.1 ms vs 0.9 ms/token
    busy_fast, busy_slow = replace(fast, queue_lengths=(3,)), replace(slow, queue_lengths=(3,))
    assert ids(rank([busy_slow, busy_fast], "new", cfg))[0] == "r0"


def test_reported_queued_tokens_price_the_work_ahead_instead_of_a_mean_request():
    # two waiting requests either way; at r0 they are long (900 tokens), at r1 short (60)
    long_q = costed("r0", resident=frozenset({"a"}), queue_lengths=(2,), running=1, queued_tokens=900.0)
    short_q = costed("r1", resident=frozenset({"a"}), queue_lengths=(2,), running=1, queued_tokens=60.0)
    assert est_ttft(long_q, "a", tokens=50) == pytest.approx(0.02 + 0.9 + 0.05)
    assert est_ttft(short_q, "a", tokens=50) == pytest.approx(0.02 + 0.06 + 0.05)
    assert ids(rank([long_q, short_q], "a", AffinityConfig(load_slack=10)))[0] == "r1"
    # the same depth without the report: a mean request each, a tie the tiers and hash break
    unknown = [replace(long_q, queued_tokens=None), replace(short_q, queued_tokens=None)]
    assert est_ttft(unknown[0], "a", tokens=50) == est_ttft(unknown[1], "a", tokens=50)
    # per-class depth when the class is known and there are several queues (tokens are not per class)
    multi = replace(long_q, queue_lengths=(1, 1))
    assert multi.tokens_ahead(0) == pytest.approx(100) and multi.tokens_ahead(None) == pytest.approx(900)
    assert ReplicaView.from_stats("r0", long_q.to_stats()) == long_q
    for garbage in ("x", True, float("nan")):
        assert ReplicaView.from_stats("r0", {"queued_tokens": garbage}).queued_tokens is None


def test_tokens_sent_since_the_report_add_to_the_reported_queue():
    router = AffinityRouter(AffinityConfig(load_slack=10))
    router.update(costed("r0", queued_tokens=100.0), as_of=1.0)
    router.assigned("r0", "a", now=2.0, key="k1", tokens=300.0)
    router.assigned("r0", "a", now=2.0, key="k2")  # size unknown: the replica's mean (100)
    assert router.view("r0").queued_tokens == pytest.approx(500.0)
    router.completed("r0", "k1", now=3.0)
    assert router.view("r0").queued_tokens == pytest.approx(200.0)
    router.update(costed("r0", queued_tokens=0.0), as_of=4.0)  # measured after both were sent
    assert router.view("r0").queued_tokens == 0.0
