"""1-D K-means for queue boundaries, with an elbow rule for K.

Clustering: Lloyd's algorithm on sorted values. In one dimension clusters are contiguous runs of the
sorted values, so each assignment step is K-1 binary searches. Initial centroids are the quantiles of
the distinct values, so the result is deterministic. (Lloyd finds a local optimum; with quantile
initialisation on 1-D data it is the global one in the cases that matter here: well-separated modes.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate, pairwise


def _segments(values: Sequence[float], centroids: Sequence[float]) -> list[tuple[int, int]]:
    cuts = [0] + [bisect_left(values, (a + b) / 2) for a, b in pairwise(centroids)] + [len(values)]
    return [(cuts[i], cuts[i + 1]) for i in range(len(centroids))]


def _wcss(values: Sequence[float], segments: list[tuple[int, int]]) -> float:
    total = 0.0
    for i, j in segments:
        if j > i:
            mean = sum(values[i:j]) / (j - i)
            total += sum((v - mean) ** 2 for v in values[i:j])
    return total


def _means(prefix: list[float], segs: list[tuple[int, int]]) -> list[float]:
    return [(prefix[j] - prefix[i]) / (j - i) for i, j in segs]


def kmeans_1d(values: Sequence[float], k: int, max_iter: int = 100) -> tuple[list[float], float]:
    """Cluster sorted `values` into at most k groups. Returns (sorted centroids, WCSS).

    Fewer than k centroids come back when there are fewer than k distinct values or a cluster empties.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not values:
        return [], 0.0
    if any(b < a for a, b in pairwise(values)):
        raise ValueError("kmeans_1d needs sorted values")
    distinct = sorted(set(values))
    k = min(k, len(distinct))
    centroids = [distinct[int((c + 0.5) * len(distinct) / k)] for c in range(k)]
    prefix = [0.0, *accumulate(values)]
    for _ in range(max_iter):
        segs = [(i, j) for i, j in _segments(values, centroids) if j > i]
        new = _means(prefix, segs)
        if new == centroids:
            break
        centroids = new
    return centroids, _wcss(values, _segments(values, centroids))


def choose_k(values: Sequence[float], k_max: int, elbow: float) -> tuple[int, list[float], list[float]]:
    """Elbow rule: the smallest K whose WCSS is within `elbow` * WCSS(1) of WCSS(k_max).

    (The paper's "minimal WCSS" would always pick k_max.) Returns (K, centroids, [WCSS(1..k_max)]).
    """
    values = sorted(values)
    results = [kmeans_1d(values, k) for k in range(1, k_max + 1)]
    wcss = [w for _, w in results]
    if not values or wcss[0] <= 0.0:
        return 1, results[0][0], wcss
    for centroids, w in results:
        if w - wcss[-1] <= elbow * wcss[0]:
            return len(centroids), centroids, wcss
    return len(results[-1][0]), results[-1][0], wcss


def boundaries(centroids: Sequence[float]) -> list[float]:
    """Midpoints between sorted centroids; queue i holds WRS in [B_{i-1}, B_i)."""
    return [(a + b) / 2 for a, b in pairwise(centroids)]
