"""Which resource stops admission: the MLQ's arrival-order mode where compute, not memory, binds.

Deviation from the paper (issue 17, MlqConfig.compute_fcfs). After each schedule() that leaves requests
queued, the step is *prefill-bound* when it admitted something and the prompt budget left
(`SchedulerLimits.max_prefill_tokens` minus what it admitted) is smaller than every queue head's prompt:
compute, not memory or a quota, is what stopped it. `share` is an exponentially weighted mean of that
indicator over such steps. While share >= `threshold` the MLQ admits in arrival order (every queue head
counts as starved, so heads go oldest first within memory; `waiting()`, the prefetch order, is arrival
order too); below it the MLQ works as usual.
The share is a plain mean over the first 1/alpha such steps (no cold-start bias towards 0: the mode
can engage within a few dozen steps) and the mode, once on, stays on until the share falls below half
the threshold (hysteresis: no flapping at the boundary).
Why: where the per-step prefill budget binds, every queued prompt costs the same compute in whatever
order it goes, so passing moves wait from one queue to another without serving more, and arrival order
is what keeps the largest waits down; the MLQ's quotas, prefill shares and starvation bound instead
leave whichever queue is behind in a burst with the largest waits (simulated prefill-heavy class, seed 3
at 1.1 rps: 28 of the 40 slowest requests from the small-request queue, P99 16.0 s vs 14.4 s for
cache only; arrival order inside the MLQ: 14.3 s). Where memory binds (KV reserved for long outputs,
adapters) the order changes what fits and the queues win (conversation trace P99 0.24-0.39x fifo).
Measured at each class's high load with the MLQ, share of prefill-bound steps: prefill-heavy 0.47-0.72
(seeds 0-4), conversation trace 0.06, bimodal 0.06, bursty 0.02, decode-heavy and long-tail 0.00
(benchmarks/README.md, "Compute-bound arrival order (issue 17, session 3)").
"""

from __future__ import annotations

from collections.abc import Iterable

HYSTERESIS = 0.5  # once on, the mode stays on until the share falls below half the threshold


class BindingTracker:
    """EWMA of the prefill-bound indicator over steps that leave requests queued."""

    __slots__ = ("_n", "_on", "alpha", "flips", "share", "threshold")

    def __init__(self, threshold: float, alpha: float = 0.02) -> None:
        self.threshold, self.alpha = threshold, alpha
        self.share = 0.0
        self.flips = 0  # mode changes (stats)
        self._on = False
        self._n = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def compute_bound(self) -> bool:
        """Arrival-order mode: on, and the recent share of prefill-bound steps reached the threshold."""
        return self._on

    def observe(self, admitted: int, prefill_left: int, head_prompts: Iterable[int]) -> None:
        """One step that left requests queued: `admitted` requests took the budget down to `prefill_left`;
        head_prompts: the prompt tokens of every non-empty queue's head."""
        smallest = min(head_prompts, default=None)
        if smallest is None or not self.enabled:
            return
        bound = admitted > 0 and prefill_left < smallest
        self._n += 1  # the plain mean of the first 1/alpha steps, then the EWMA: no cold-start bias to 0
        self.share += max(self.alpha, 1.0 / self._n) * ((1.0 if bound else 0.0) - self.share)
        on = self.share >= (self.threshold * HYSTERESIS if self._on else self.threshold)
        if on != self._on:
            self._on = on
            self.flips += 1
