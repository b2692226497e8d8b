"""Adapter-affinity routing over replicas (each replica = one router + its shard group), with bounded load.

Pure policy, shared by the Ray Serve request router (chameleon/scale/) and the multi-replica simulator
(chameleon/sim/replicas.py). It sees each replica through a `ReplicaView`: a snapshot of what that
replica's router reported (Ray's routing-stats hook; the simulator takes the same snapshot on the same
period), plus what this router itself sent there since that snapshot (`AffinityRouter.assigned`).

Ranking for a request of adapter `a` (best first):
  1. bounded load: replicas whose load (queued + running) is above `load_factor` x the mean load and
     `load_slack` above it get nothing new while some replica is below that bound (consistent hashing
     with bounded loads, Mirrokni et al. 2018): a safety net, so no replica melts whatever the estimates;
  2. estimated TTFT there (`est_ttft`), when every replica reported its costs (`ReplicaView.costed`):
     the work queued ahead (a step in progress, the prefill of the prompt tokens waiting there, or
     of the requests waiting in the request's MLQ class and the classes before it at a mean size when
     the replica does not report its queued tokens, the loads of their adapters) + the request's own
     prefill (its prompt tokens when the caller knows or estimates them) +
     one adapter load (x `miss_weight`) when `a` is neither resident nor already queued for there;
     the request's own prefill and load are priced at the replicas' mean rates (the same request costs
     about the same anywhere; noise in the measured rates must not break ties: the tiers and the hash
     do). So affinity wins where a load costs more than the difference in queued work, and a hot
     adapter spreads otherwise;
  3. affinity tier: `a` resident (0) < `a` queued for or loading there (1) < free pages for `a` (2) <
     it would have to evict (3);
  4. queue depth ahead of the request: the requests waiting in its MLQ class and the classes before it
     (all waiting requests when the class is unknown);
  5. load; 6. a rendezvous hash of (adapter, replica): every router picks the same home for a new
     adapter, so two routers do not each load it on a different replica.
Without cost figures (a replica that has not reported them yet) step 2 is skipped: pure affinity under
the load bound. Base-model requests (adapter None) have tier 0 everywhere: least work wins.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What one replica reported. `free_pages`: pages a new adapter could take without evicting
    (free pool pages; idle cached adapters count as evictable, not free). `queue_lengths`: requests
    waiting per MLQ class, smallest class first (one entry under FIFO/SJF).

    Costs, as measured there recently (0 = not known yet): `prefill_s_per_token` (prefill step time
    per prompt token), `tokens_per_request` (mean prompt tokens), `load_s` (mean adapter load time),
    `step_s` (a decode step: what a new request waits for when the replica is busy).
    `queued_tokens`: prompt tokens of the waiting requests (None: not reported). The prefill a new
    request waits for is what predicts its TTFT (on the live CPU runs of benchmarks/README.md, with the
    request's own prompt: 59-80% of the variance explained, against 54-64% for the number of waiting
    requests), so a replica that reports it is weighed by it rather than by queue depth x a mean size."""

    replica_id: str
    resident: frozenset[str] = frozenset()
    pending: frozenset[str] = frozenset()
    free_pages: int = 0
    queue_lengths: tuple[int, ...] = ()
    running: int = 0
    prefill_s_per_token: float = 0.0
    tokens_per_request: float = 0.0
    load_s: float = 0.0
    step_s: float = 0.0
    queued_tokens: float | None = None

    @property
    def costed(self) -> bool:
        """Reports the costs `est_ttft` needs (a prefill rate and a request size)."""
        return self.prefill_s_per_token > 0 and self.tokens_per_request > 0

    @property
    def waiting(self) -> int:
        return sum(self.queue_lengths)

    @property
    def load(self) -> int:
        return self.running + self.waiting

    def depth(self, qclass: int | None) -> int:
        """Requests waiting ahead of a request of MLQ class `qclass` (None: all waiting)."""
        if qclass is None or not self.queue_lengths:
            return self.waiting
        return sum(self.queue_lengths[: qclass + 1])

    def tokens_ahead(self, qclass: int | None) -> float:
        """Prompt tokens waiting ahead of a request of MLQ class `qclass`: the reported queued tokens
        when known and the class is not (or there is one queue), else depth x the mean request."""
        if self.queued_tokens is not None and (qclass is None or len(self.queue_lengths) <= 1):
            return self.queued_tokens
        return self.depth(qclass) * self.tokens_per_request

    def to_stats(self) -> dict[str, Any]:
        """A JSON-able dict (Ray's routing stats); `from_stats` reads it back."""
        return {"resident": sorted(self.resident), "pending": sorted(self.pending),
                "free_pages": self.free_pages, "queue_lengths": list(self.queue_lengths),
                "running": self.running, **{k: getattr(self, k) for k in COSTS},
                **({} if self.queued_tokens is None else {"queued_tokens": self.queued_tokens})}

    @classmethod
    def from_stats(cls, replica_id: str, stats: Mapping[str, Any]) -> ReplicaView:
        """Tolerant of missing or malformed keys (a replica that has not reported yet: empty view)."""
        def ids(key: str) -> frozenset[str]:
            value = stats.get(key)
            return frozenset(str(v) for v in value) if isinstance(value, (list, tuple, set)) else frozenset()

        def count(value: Any) -> int:
            return max(0, int(value)) if isinstance(value, (int, float)) and math.isfinite(value) else 0

        def amount(value: Any) -> float | None:
            """A finite number >= 0 (negatives clipped); None when `value` is not a number."""
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            return max(0.0, float(value)) if ok else None

        queues = stats.get("queue_lengths")
        lengths = tuple(count(q) for q in queues) if isinstance(queues, (list, tuple)) else ()
        return cls(replica_id, ids("resident"), ids("pending"), count(stats.get("free_pages")), lengths,
                   count(stats.get("running")), *(amount(stats.get(k)) or 0.0 for k in COSTS),
                   queued_tokens=amount(stats.get("queued_tokens")))


COSTS = ("prefill_s_per_token", "tokens_per_request", "load_s", "step_s")


DEFAULT_MISS_WEIGHT = 24.0


@dataclass(frozen=True, slots=True)
class AffinityConfig:
    """`load_factor` (c >= 1) and `load_slack` (requests) set the load bound: max(c x mean, mean + slack)
    where mean counts the request being placed. `miss_weight` (w): within the bound, rank by estimated
    TTFT when the replicas report costs, a load charged w times its measured time: its own time and
    what breaking affinity costs later (the adapter copied to a second replica, whose next requests
    there miss too, or an adapter evicted); 0 = tier first (pure affinity within the bound)."""

    load_factor: float = 1.25
    load_slack: int = 4
    miss_weight: float = DEFAULT_MISS_WEIGHT

    def __post_init__(self) -> None:
        if self.load_factor < 1.0 or self.load_slack < 0 or not self.miss_weight >= 0:
            raise ValueError("load_factor must be >= 1, load_slack >= 0 and miss_weight >= 0")


def rendezvous(adapter_id: str | None, replica_id: str) -> int:
    """Deterministic hash weight of (adapter, replica), the same in every process."""
    digest = hashlib.blake2b(f"{adapter_id}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def tier(view: ReplicaView, adapter_id: str | None, pages: int) -> int:
    """0 resident, 1 queued/loading, 2 fits in free pages, 3 would evict (base model: 0)."""
    if adapter_id is None or adapter_id in view.resident:
        return 0
    if adapter_id in view.pending:
        return 1
    return 2 if view.free_pages >= pages else 3


def est_ttft(view: ReplicaView, adapter_id: str | None, pages: int = 1, qclass: int | None = None,
             tokens: float | None = None, miss_weight: float = 1.0,
             own_rates: tuple[float, float] | None = None) -> float:
    """Estimated time to first token of a request of `tokens` prompt tokens (None: the replica's mean)
    there: a step in progress when busy, the prefill of the prompt tokens waiting ahead
    (`ReplicaView.tokens_ahead`) and a load
    for each adapter queued there but not resident, its own prefill, and one load (x `miss_weight`)
    unless `adapter_id` is resident or already queued for there. The request's own prefill and load are
    priced at `own_rates` = (seconds per prompt token, seconds per load) when given, else at the
    replica's. Needs `view.costed`."""
    own_tokens = view.tokens_per_request if tokens is None else tokens
    per_token, per_load = own_rates if own_rates is not None else (view.prefill_s_per_token, view.load_s)
    busy = view.step_s if view.load > 0 else 0.0
    ahead = view.tokens_ahead(qclass) * view.prefill_s_per_token
    loads_ahead = len(view.pending - view.resident) * view.load_s
    own_load = per_load * miss_weight if tier(view, adapter_id, pages) >= 2 else 0.0
    return busy + ahead + loads_ahead + own_tokens * per_token + own_load


def load_bound(views: Sequence[ReplicaView], config: AffinityConfig) -> float:
    mean = (sum(v.load for v in views) + 1) / len(views)
    return max(config.load_factor * mean, mean + config.load_slack)


def rank(views: Sequence[ReplicaView], adapter_id: str | None, config: AffinityConfig,
         pages: int = 1, qclass: int | None = None, tokens: float | None = None) -> list[ReplicaView]:
    """`views` best first (see the module docstring); empty in, empty out."""
    if not views:
        return []
    bound = load_bound(views, config)
    costed = config.miss_weight > 0 and all(v.costed for v in views)
    n = len(views)  # the same request costs about the same anywhere: noise in the rates must not break ties
    own_tokens = sum(v.tokens_per_request for v in views) / n if tokens is None else tokens
    own_rates = (sum(v.prefill_s_per_token for v in views) / n, sum(v.load_s for v in views) / n)

    def key(v: ReplicaView) -> tuple[int, float, int, int, int, int]:
        over = 1 if v.load + 1 > bound else 0
        cost = 0.0
        if costed:
            cost = est_ttft(v, adapter_id, pages, qclass, own_tokens, config.miss_weight, own_rates)
        home = -rendezvous(adapter_id, v.replica_id)
        return (over, cost, tier(v, adapter_id, pages), v.depth(qclass), v.load, home)

    return sorted(views, key=key)


class AffinityRouter:
    """Views of the replicas plus what this router did since each replica's last report.

    `assigned(replica, adapter, now, key, tokens)` records a request sent there (one more waiting
    request of that adapter, with `tokens` prompt tokens: None = the replica's mean);
    `completed(replica, key, now)` a request that finished there (no longer counted as load; its
    adapter counts as resident). `update(view, as_of)` takes a report measured at `as_of`:
    what happened before that is inside it, what happened later is still added on top (a report
    measured before a request arrived must not make the router forget it)."""

    def __init__(self, config: AffinityConfig | None = None) -> None:
        self.config = config or AffinityConfig()
        self._views: dict[str, ReplicaView] = {}
        self._sent: dict[str, dict[object, tuple[float, str | None, float | None]]] = {}
        self._done: dict[str, list[tuple[float, str]]] = {}
        self._anonymous = 0  # keys of requests sent without one

    def update(self, view: ReplicaView, as_of: float = math.inf) -> None:
        rid = view.replica_id
        self._views[rid] = view
        self._sent[rid] = {k: e for k, e in self._sent.get(rid, {}).items() if e[0] >= as_of}
        self._done[rid] = [e for e in self._done.get(rid, ()) if e[0] >= as_of]

    def forget(self, replica_id: str) -> None:
        for table in (self._views, self._sent, self._done):
            table.pop(replica_id, None)

    def view(self, replica_id: str) -> ReplicaView:
        """The last report with what happened since added (an empty view before any report)."""
        base = self._views.get(replica_id, ReplicaView(replica_id))
        sent, done = self._sent.get(replica_id, {}), self._done.get(replica_id, ())
        if not sent and not done:
            return base
        queues = list(base.queue_lengths) or [0]
        queues[-1] += len(sent)
        pending = frozenset(a for _, a, _ in sent.values() if a is not None)
        queued = base.queued_tokens
        if queued is not None:
            queued += sum(base.tokens_per_request if t is None else t for _, _, t in sent.values())
        return replace(base, resident=base.resident | {a for _, a in done}, pending=base.pending | pending,
                       queue_lengths=tuple(queues), queued_tokens=queued)

    def choose(self, candidates: Iterable[str], adapter_id: str | None, pages: int = 1,
               qclass: int | None = None, tokens: float | None = None) -> list[str]:
        """Candidate replica ids best first (nothing is recorded: call `assigned` with the pick)."""
        views = [self.view(r) for r in candidates]
        return [v.replica_id for v in rank(views, adapter_id, self.config, pages, qclass, tokens)]

    def assigned(self, replica_id: str, adapter_id: str | None, now: float = 0.0,
                 key: object | None = None, tokens: float | None = None) -> None:
        sent = self._sent.setdefault(replica_id, {})
        self._anonymous += 1
        sent[key if key is not None else ("anonymous", self._anonymous)] = (now, adapter_id, tokens)

    def completed(self, replica_id: str, key: object, now: float) -> None:
        """The request sent with `key` finished (unknown keys are ignored)."""
        entry = self._sent.get(replica_id, {}).pop(key, None)
        if entry is not None and entry[1] is not None:
            self._done.setdefault(replica_id, []).append((now, entry[1]))
