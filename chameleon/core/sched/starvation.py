"""The MLQ's starvation bound: a request that has waited much longer than its queue usually does is
admitted ahead of newer work (within memory).

Deviation from the paper (issue 17): the paper argues that every queue gets its quota each iteration, so
nothing starves; that holds only for the resource the quotas are in. The expected wait is an
exponentially weighted mean of the waits (arrival to admission) of normally admitted requests (all
queues: basis "global" and "both"; the request's own queue: "queue"); a queued head whose wait exceeds
`factor` x max(expected wait, floor_s) is *starved*; with basis "both" (the default) also one that
waited longer than the SLO the quotas are sized for; with "slo" the bound is factor x the SLO. Starved
admissions do not feed the means (else the bound would drift up with the waits it bounds). At the start
of every step starved heads are admitted oldest first (repeatedly: the next request of a queue once it
is the head and starved), before phase 1 and regardless of queue quotas (charged to their own queue), as
long as memory and the step's limits admit them; when the oldest starved head does not fit, no newer
request is admitted in that step (its memory frees as running requests finish, as under FIFO). Only
queue heads are examined (FIFO within a queue makes the head the oldest): O(K) per admission.
Measured (simulator, benchmarks/README.md): with the global mean x 3 the prefill-heavy class keeps
FIFO's P99 at every load below saturation (the SLO basis alone let it rise to the SLO: +27% at 1 rps).
"""

from __future__ import annotations

from collections import deque

TAIL_MIN_SAMPLES = 8    # a queue's recent tail counts once it has this many admissions in its window
TAIL_REFRESH = 16       # recompute a queue's tail quantile after this many new admissions


class TailWindow:
    """The last `size` admission waits of one queue and their `quantile`, recomputed every
    TAIL_REFRESH additions (sorting `size` floats: a few microseconds, amortised)."""

    __slots__ = ("_dirty", "_tail", "quantile", "waits")

    def __init__(self, size: int, quantile: float) -> None:
        self.waits: deque[float] = deque(maxlen=size)
        self.quantile = quantile
        self._tail: float | None = None
        self._dirty = 0

    def add(self, wait_s: float) -> None:
        self.waits.append(wait_s)
        self._dirty += 1

    def tail(self) -> float | None:
        """The quantile of the recent waits; None while fewer than TAIL_MIN_SAMPLES were seen."""
        if len(self.waits) < TAIL_MIN_SAMPLES:
            return None
        if self._tail is None or self._dirty >= TAIL_REFRESH:
            xs = sorted(self.waits)
            self._tail = xs[min(len(xs) - 1, int(self.quantile * len(xs)))]
            self._dirty = 0
        return self._tail


class WaitTracker:
    """Per-queue expected wait (EWMA of admission waits) and the starvation threshold."""

    def __init__(self, k: int, factor: float, floor_s: float, basis: str = "both", slo_s: float = 5.0,
                 alpha: float = 0.05, tail_quantile: float = 0.99, tail_window: int = 256,
                 tail_peers: str = "others", tail_starved: bool = True) -> None:
        self.factor, self.floor_s, self.alpha, self.basis, self.slo_s = factor, floor_s, alpha, basis, slo_s
        self.tail_quantile, self.tail_window = tail_quantile, tail_window
        self.tail_peers, self.tail_starved = tail_peers, tail_starved
        self.expected: list[float] = [0.0] * k
        self.overall = 0.0
        self.starved_total = 0
        self.tails = [TailWindow(tail_window, tail_quantile) for _ in range(k)]

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def relayout(self, k: int) -> None:
        """New queues: every queue starts from the mean expectation of the old ones."""
        mean = sum(self.expected) / len(self.expected) if self.expected else 0.0
        self.expected = [mean] * k
        if len(self.tails) != k:  # same K: queue i keeps its history (the boundaries move a little)
            self.tails = [TailWindow(self.tail_window, self.tail_quantile) for _ in range(k)]

    def observe(self, q: int, wait_s: float) -> None:
        e = self.expected[q]
        self.expected[q] = wait_s if e == 0.0 else e + self.alpha * (wait_s - e)
        self.overall = wait_s if self.overall == 0.0 else self.overall + self.alpha * (wait_s - self.overall)
        self.tails[q].add(wait_s)

    def observe_starved(self, q: int, wait_s: float) -> None:
        """A starved admission: not in the means (they would drift up with the waits they bound), but
        part of its queue's recent tail (with tail_starved), which is what the other queues compare to."""
        self.starved_total += 1
        if self.tail_starved:
            self.tails[q].add(wait_s)

    def peer_tail(self, q: int) -> float | None:
        """The largest recent tail wait of the queues that pass queue q (all others, or the smaller
        ones: tail_peers); None while none has enough samples."""
        if self.tail_peers == "larger":
            peers = range(q + 1, len(self.tails))
        else:
            peers = range(q) if self.tail_peers == "smaller" and q > 0 else \
                (p for p in range(len(self.tails)) if p != q)
        tails = [t for t in (self.tails[p].tail() for p in peers) if t is not None]
        return max(tails) if tails else None

    def threshold(self, q: int) -> float:
        if self.basis == "tail":
            peer = self.peer_tail(q)
            both = min(3.0 * max(self.overall, 1.0), self.slo_s)
            if self.tail_peers == "larger":
                return both if peer is None else min(both, self.factor * max(peer, self.floor_s))
            if peer is not None:
                return min(self.factor * max(peer, self.floor_s), self.slo_s)
            return both  # no history yet: the "both" default
        if self.basis == "slo":
            return self.factor * max(self.slo_s, self.floor_s)
        expected = self.expected[q] if self.basis == "queue" else self.overall
        bound = self.factor * max(expected, self.floor_s)
        return min(bound, self.slo_s) if self.basis == "both" else bound

    def starved(self, q: int, wait_s: float) -> bool:
        return self.enabled and wait_s > self.threshold(q)
