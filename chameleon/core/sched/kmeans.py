"""1-D K-means for queue boundaries, with an elbow rule for K.

Clustering: Lloyd's algorithm on sorted values. In one dimension clusters are contiguous runs of the
sorted values, so each assignment step is K-1 binary searches, and with prefix sums of the values and
of their squares (SortedValues) every cluster's mean and WCSS is O(1). Initial centroids are the quantiles of
the distinct values, so the result is deterministic. (Lloyd finds a local optimum; with quantile
initialisation on 1-D data it is the global one in the cases that matter here: well-separated modes.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate, compress, pairwise
from operator import mul, ne


class SortedValues:
    """Sorted values with prefix sums of the values and of their squares, and the distinct values:
    every segment's mean and WCSS in O(1), so a Lloyd iteration is K-1 binary searches and WCSS(K)
    is O(K). Building it is O(n) in C-level passes (no per-value Python bytecode)."""

    __slots__ = ("distinct", "prefix", "prefix2", "values")

    def __init__(self, values: Sequence[float], check: bool = True) -> None:
        if check and any(map(ne, values, sorted(values))):
            raise ValueError("kmeans_1d needs sorted values")
        self.values = values
        self.prefix = [0.0, *accumulate(values)]
        self.prefix2 = [0.0, *accumulate(map(mul, values, values))]
        self.distinct = [values[0], *compress(values[1:], map(ne, values[1:], values))] if values else []

    @classmethod
    def empty(cls, values: Sequence[float]) -> SortedValues:
        """Prepared for `extend` (sorted values, not checked): build the sums in steps."""
        sv = cls.__new__(cls)
        sv.values, sv.prefix, sv.prefix2, sv.distinct = values, [0.0], [0.0], []
        return sv

    def extend(self, j: int) -> None:
        """Extend the sums and distinct values to values[:j] (same numbers as building at once)."""
        i, v = len(self.prefix) - 1, self.values
        if j <= i:
            return
        part = v[i:j]
        self.prefix += accumulate(part, initial=self.prefix[-1])
        del self.prefix[i + 1]  # the initial value, repeated
        self.prefix2 += accumulate(map(mul, part, part), initial=self.prefix2[-1])
        del self.prefix2[i + 1]
        if i == 0:
            self.distinct.append(v[0])
            i = 1
        self.distinct += compress(v[i:j], map(ne, v[i:j], v[i - 1:j - 1]))

    def mean(self, i: int, j: int) -> float:
        return (self.prefix[j] - self.prefix[i]) / (j - i)

    def wcss(self, i: int, j: int) -> float:
        """Sum of squared deviations from the mean of values[i:j] (never negative)."""
        if j <= i:
            return 0.0
        s = self.prefix[j] - self.prefix[i]
        return max(0.0, self.prefix2[j] - self.prefix2[i] - s * s / (j - i))


def _segments(values: Sequence[float], centroids: Sequence[float]) -> list[tuple[int, int]]:
    cuts = [0] + [bisect_left(values, (a + b) / 2) for a, b in pairwise(centroids)] + [len(values)]
    return [(cuts[i], cuts[i + 1]) for i in range(len(centroids))]


def lloyd(sv: SortedValues, k: int, max_iter: int = 100) -> tuple[list[float], float]:
    """kmeans_1d on prepared values: O(max_iter * K log n)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not sv.values:
        return [], 0.0
    distinct = sv.distinct
    k = min(k, len(distinct))
    centroids = [distinct[int((c + 0.5) * len(distinct) / k)] for c in range(k)]
    for _ in range(max_iter):
        new = [sv.mean(i, j) for i, j in _segments(sv.values, centroids) if j > i]
        if new == centroids:
            break
        centroids = new
    return centroids, sum(sv.wcss(i, j) for i, j in _segments(sv.values, centroids))


def kmeans_1d(values: Sequence[float], k: int, max_iter: int = 100) -> tuple[list[float], float]:
    """Cluster sorted `values` into at most k groups. Returns (sorted centroids, WCSS).

    Fewer than k centroids come back when there are fewer than k distinct values or a cluster empties.
    """
    return lloyd(SortedValues(values), k, max_iter)


def choose_k(values: Sequence[float], k_max: int, elbow: float,
             presorted: bool = False) -> tuple[int, list[float], list[float]]:
    """Elbow rule: the smallest K whose WCSS is within `elbow` * WCSS(1) of WCSS(k_max).

    (The paper's "minimal WCSS" would always pick k_max.) Returns (K, centroids, [WCSS(1..k_max)]).
    presorted: `values` are already sorted (skips the sort and the check).
    """
    sv = SortedValues(values if presorted else sorted(values), check=False)
    return elbow_k([lloyd(sv, k) for k in range(1, k_max + 1)], elbow)


def elbow_k(results: list[tuple[list[float], float]],
            elbow: float) -> tuple[int, list[float], list[float]]:
    """The elbow rule over [(centroids, WCSS) for K = 1..k_max] (see choose_k)."""
    wcss = [w for _, w in results]
    if not results[0][0] or wcss[0] <= 0.0:
        return 1, results[0][0], wcss
    for centroids, w in results:
        if w - wcss[-1] <= elbow * wcss[0]:
            return len(centroids), centroids, wcss
    return len(results[-1][0]), results[-1][0], wcss


def boundaries(centroids: Sequence[float]) -> list[float]:
    """Midpoints between sorted centroids; queue i holds WRS in [B_{i-1}, B_i)."""
    return [(a + b) / 2 for a, b in pairwise(centroids)]
