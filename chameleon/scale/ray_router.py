"""Ray Serve request router with adapter affinity (Ray's request-router extension point).

Configured on the replica deployment by `request_router_config` (chameleon/scale/ray_serve.py). For a
request it reads the adapter id from Ray's multiplexed model id, ranks the healthy candidate replicas
with `chameleon.core.affinity` (views = what each replica last reported through its
`record_routing_stats` hook, plus what this router sent there since) and hands Ray one replica per
rank: Ray takes the first that accepts (queue below max_ongoing_requests). Replicas that report
`healthy: false` (their shards are recovering) go last, so requests route around them.

The request's prompt size, which the ranking weighs against the prefill queued at each replica, is
estimated from the body the Ingress forwards (chameleon/scale/prompt_size.py) and remembered with the
request until the replicas' next reports include it.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from chameleon.core.affinity import DEFAULT_MISS_WEIGHT, AffinityConfig, AffinityRouter, ReplicaView
from chameleon.scale.prompt_size import PromptSizer, prompt_chars

MAX_UNROUTED = 4096  # prompt estimates kept for requests not routed yet


class AdapterAffinityRequestRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, load_factor: float = 1.25, load_slack: int = 4,
                         miss_weight: float = DEFAULT_MISS_WEIGHT, **kwargs: Any) -> None:
        """Ray calls this with `request_router_kwargs`."""
        self.affinity = AffinityRouter(AffinityConfig(load_factor, load_slack, miss_weight))
        self.report_ts: dict[str, float] = {}
        self.sizer = PromptSizer()
        self.tokens: dict[str, float | None] = {}  # internal request id -> estimated prompt tokens

    def _refresh(self, replica: RunningReplica) -> bool:
        """Take a new report of `replica` into the views; True when it reports itself healthy."""
        stats = replica.routing_stats or {}
        rid = replica.replica_id.unique_id
        ts = stats.get("ts")
        if isinstance(ts, (int, float)) and ts != self.report_ts.get(rid):
            self.report_ts[rid] = float(ts)
            self.affinity.update(ReplicaView.from_stats(rid, stats), as_of=float(ts))
        return stats.get("healthy", True) is not False

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        healthy = [r for r in candidate_replicas if self._refresh(r)]
        sick = [r for r in candidate_replicas if r not in healthy]
        adapter = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        ids = [r.replica_id.unique_id for r in healthy]
        tokens = self._prompt_tokens(pending_request, ids)
        order = self.affinity.choose(ids, adapter or None, tokens=tokens)
        return [[by_id[rid]] for rid in order] + ([sick] if sick else [])

    def _prompt_tokens(self, pending_request: PendingRequest | None, replica_ids: list[str]) -> float | None:
        """Estimated prompt tokens of the request (None: unknown; the ranking then uses a mean request).
        The Ingress calls `proxy(method, path, headers, body)`."""
        if pending_request is None:
            return None
        key = pending_request.metadata.internal_request_id
        if key in self.tokens:  # Ray asks again when every replica it was offered was full
            return self.tokens[key]
        args = pending_request.args
        chars = None
        if len(args) == 4 and isinstance(args[1], str) and isinstance(args[3], bytes):
            chars = prompt_chars(args[1], args[3])
        means = [self.affinity.view(rid).tokens_per_request for rid in replica_ids]
        tokens = self.sizer.tokens(chars, means)
        if chars is not None:
            self.sizer.observe(chars)
        self.tokens[key] = tokens
        while len(self.tokens) > MAX_UNROUTED:  # requests cancelled before they were routed
            del self.tokens[next(iter(self.tokens))]
        return tokens

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        meta = pending_request.metadata
        tokens = self.tokens.pop(meta.internal_request_id, None)
        self.affinity.assigned(replica_id.unique_id, meta.multiplexed_model_id or None, time.time(),
                               key=meta.internal_request_id, tokens=tokens)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.affinity.completed(replica_id.unique_id, internal_request_id, time.time())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.affinity.forget(replica_id.unique_id)
        self.report_ts.pop(replica_id.unique_id, None)
