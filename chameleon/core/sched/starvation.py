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


class WaitTracker:
    """Per-queue expected wait (EWMA of admission waits) and the starvation threshold."""

    def __init__(self, k: int, factor: float, floor_s: float, basis: str = "both", slo_s: float = 5.0,
                 alpha: float = 0.05) -> None:
        self.factor, self.floor_s, self.alpha, self.basis, self.slo_s = factor, floor_s, alpha, basis, slo_s
        self.expected: list[float] = [0.0] * k
        self.overall = 0.0
        self.starved_total = 0

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def relayout(self, k: int) -> None:
        """New queues: every queue starts from the mean expectation of the old ones."""
        mean = sum(self.expected) / len(self.expected) if self.expected else 0.0
        self.expected = [mean] * k

    def observe(self, q: int, wait_s: float) -> None:
        e = self.expected[q]
        self.expected[q] = wait_s if e == 0.0 else e + self.alpha * (wait_s - e)
        self.overall = wait_s if self.overall == 0.0 else self.overall + self.alpha * (wait_s - self.overall)

    def threshold(self, q: int) -> float:
        if self.basis == "slo":
            return self.factor * max(self.slo_s, self.floor_s)
        expected = self.expected[q] if self.basis == "queue" else self.overall
        bound = self.factor * max(expected, self.floor_s)
        return min(bound, self.slo_s) if self.basis == "both" else bound

    def starved(self, q: int, wait_s: float) -> bool:
        return self.enabled and wait_s > self.threshold(q)
