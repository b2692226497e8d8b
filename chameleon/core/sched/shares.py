"""Each queue's share of the per-step prefill token budget (compute), enforced by deficit round robin.

Deviation from the paper (issue 17): the paper's quotas are in memory tokens only. Where memory never
binds (long prompts, short answers) those quotas never bind either and Algorithm 1 degenerates into
shortest-queue-first over the resource that does bind, the per-step prefill budget
(`SchedulerLimits.max_prefill_tokens`): the small-request queues fill every step's budget and the
large-request queue starves (simulated prefill-heavy class: P99 TTFT +34% over FIFO). So each queue
also owns a share of the prefill budget:
- weights: each queue's offered prefill load in the refresh window (sum of its arrivals' prompt
  tokens), with a floor of `floor` / K so that no queue with arrivals is shut out, normalised to 1;
- credits: at every step a queue with a waiting head earns `share = weight x budget` prompt tokens of
  credit, capped at max(share, its head's prompt) so credit is never hoarded beyond what its next
  request needs; an empty queue's credit is reset (its share is leftover for this step).
  Phase 1 admits a head only when the queue's credit covers its prompt and spends it;
- order: a queue whose credit exceeds one share (it has saved over several steps for a prompt larger
  than its share) goes first in phase 1, so the smaller queues' shares cannot keep eating the room
  its prompt needs; the others go small to large as in the paper;
- phase 2 (leftover, as for memory): what phase 1 left of the step's budget goes to queues small to
  large, without spending credit, so the budget is never idle while requests wait (work conserving).
Measured (benchmarks/README.md, issue 17 section): together with the starvation bound the shares lower
P99 TTFT on the conversation trace, bimodal and bursty classes by 3-11% against the bound alone.
Where the prefill budget does not bind (the paper's conversation trace: a few hundred prompt tokens a
step against 4,096) phase 2 admits what the credits held back, in the same step, and the behaviour is
the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence


def prefill_weights(offered: Sequence[float], floor: float = 0.25) -> list[float]:
    """Normalised weights from each queue's offered prefill tokens; every queue gets >= floor / K."""
    k = len(offered)
    if k == 0:
        return []
    total = sum(max(0.0, x) for x in offered)
    raw = [max(0.0, x) / total if total > 0 else 1.0 / k for x in offered]
    w = [max(r, floor / k) for r in raw]
    s = sum(w)
    return [x / s for x in w]


class PrefillShares:
    """Per-queue prefill credits. `start_step` once per schedule(), then `order`, `covers`, `spend`."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights: list[float] = []
        self.credit: list[float] = []
        self.share: list[float] = []
        self.relayout(weights)

    def relayout(self, weights: Sequence[float]) -> None:
        """New queues: weights normalised; credits start from zero."""
        total = sum(weights)
        k = len(weights)
        self.weights = [w / total for w in weights] if total > 0 else [1.0 / max(k, 1)] * k
        self.credit = [0.0] * k
        self.share = [0.0] * k

    def start_step(self, budget: int, heads: Sequence[int]) -> None:
        """heads[q]: prompt tokens of queue q's head request, 0 when the queue is empty."""
        for q, head in enumerate(heads):
            share = self.weights[q] * budget
            self.share[q] = share
            if head <= 0:
                self.credit[q] = 0.0
            else:
                self.credit[q] = min(self.credit[q] + share, max(share, float(head)))

    def order(self) -> list[int]:
        """Phase-1 queue order: queues that saved more than one share first, then small to large."""
        k = len(self.credit)
        saved = [q for q in range(k) if self.credit[q] > self.share[q] > 0]
        return saved + [q for q in range(k) if q not in saved]

    def covers(self, q: int, tokens: int) -> bool:
        return self.credit[q] >= tokens

    def spend(self, q: int, tokens: int) -> None:
        self.credit[q] = max(0.0, self.credit[q] - tokens)
