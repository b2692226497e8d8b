"""Formulas: WRS, 1-D K-means and the K rule, queue boundaries, M/M/1 quota sizing."""

from __future__ import annotations

import pytest

from chameleon.core.sched.config import MlqConfig
from chameleon.core.sched.kmeans import boundaries, choose_k, kmeans_1d
from chameleon.core.sched.quotas import QueueLoad, size_quotas, size_statistic, split_quotas, tok_min
from chameleon.core.sched.window import WrsModel


def test_wrs_formula():
    m = WrsModel()
    m.observe(1000, 500, 64)
    assert m.wrs(250, 100, 32) == pytest.approx((0.4 * 0.25 + 0.6 * 0.2) * 0.5)
    assert m.wrs(1000, 500, 64) == pytest.approx(1.0)
    assert m.wrs(1000, 500, 0) == pytest.approx(0.05)  # base model: the floor factor
    none = WrsModel()
    none.observe(100, 100, 0)
    assert none.wrs(50, 50, 0) == pytest.approx(0.5)  # no adapters at all: factor 1


def test_kmeans_two_obvious_clusters():
    centroids, wcss = kmeans_1d([1, 1, 2, 10, 11, 12], 2)
    assert centroids == pytest.approx([4 / 3, 11])
    assert wcss == pytest.approx(2 / 3 + 2)
    assert boundaries(centroids) == pytest.approx([(4 / 3 + 11) / 2])


def test_kmeans_degenerate_inputs():
    assert kmeans_1d([], 3) == ([], 0.0)
    assert kmeans_1d([5, 5, 5], 3) == ([5.0], 0.0)
    with pytest.raises(ValueError):
        kmeans_1d([3, 1], 2)


def test_elbow_rule_picks_the_knee_not_kmax():
    vals = [1.0, 1.1, 0.9] * 5 + [10.0, 10.2, 9.8] * 5 + [20.0, 21.0, 19.0] * 5
    k, centroids, wcss = choose_k(vals, 4, 0.05)
    assert k == 3 and centroids == pytest.approx([1.0, 10.0, 20.0])
    assert wcss[3] <= wcss[2] <= wcss[1] <= wcss[0]  # WCSS alone would pick K=4
    assert choose_k([2.0] * 10, 4, 0.1)[0] == 1
    assert choose_k(vals, 4, 0.0)[0] == 4  # elbow 0: the paper's "minimal WCSS"
    assert choose_k(vals, 4, 0.5)[0] == 2  # a looser elbow merges the two closest modes


def test_mm1_minimum_and_split():
    assert tok_min(QueueLoad(100, 2.0, 0.5), slo_s=5.0) == pytest.approx(100 * 2 * (0.2 + 0.5))
    # minima 140 and 60; the rest 800 split 2:1 -> 673.3 and 326.7; the rounding token goes to queue 0
    assert split_quotas([140, 60], 1000, weights=[2.0, 1.0]) == [674, 326]
    # default weights 1, 0.9: 140 + 800/1.9 = 561.05 and 60 + 720/1.9 = 438.95
    assert split_quotas([140, 60], 1000) == [562, 438]
    assert size_quotas([QueueLoad(100, 2.0, 0.5), QueueLoad(300, 1.0, 0.0)], 1000, 5.0) == [562, 438]
    # proportional: the rest goes by weight x Tok_min = 140 and 54: 717.3 and 282.7 (+1 to queue 0)
    assert size_quotas([QueueLoad(100, 2.0, 0.5), QueueLoad(300, 1.0, 0.0)], 1000, 5.0,
                       proportional=True) == [718, 282]
    assert split_quotas([600, 900], 1000) == [400, 600]  # minima scaled down to the capacity
    assert split_quotas([5, 5, 5], 2) == [1, 1, 1]  # tiny systems: every queue keeps >= 1 token
    assert split_quotas([0, 0], 10, weights=[0.0, 1.0]) == [1, 10]


def test_queue_size_statistic():
    needs = [10, 20, 30, 40, 1000]
    assert size_statistic(needs, "max") == 1000
    assert size_statistic(needs, "mean") == 220
    assert size_statistic(needs, "p80") == 1000 and size_statistic(needs, "p60") == 40
    assert size_statistic([], "max") == 0.0
    with pytest.raises(ValueError, match="size statistic"):
        MlqConfig(size_stat="median")
