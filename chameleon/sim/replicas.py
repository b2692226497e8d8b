"""Scale-out in simulation: N engines (one `Simulator` each) behind a replica-routing policy.

The driver walks the arrivals in time order. Before placing a request at time t it advances the
replicas it looks at to t (a replica's engine runs only its own requests, so replicas that are not
looked at can lag behind safely), asks the policy for a replica, and hands the request over.

Policies:
  pow2      Ray Serve's default request router: two replicas drawn at random, the one with fewer
            requests queued + running wins (fresh figures, as Ray probes queue lengths).
  affinity  chameleon.core.affinity: bounded load, then estimated TTFT (the prompt tokens queued
            there + the request's own, a load when the adapter is not there; the live router
            estimates a prompt's tokens from its text, the simulator knows them), then adapter
            resident > queued/loading > free pages > evict. It sees each replica as last reported
            (every `stats_period_s`, as Ray's routing-stats hook; costs from the profile's cost model,
            as a live replica measures them) plus what it sent there since.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

from chameleon.core.affinity import AffinityConfig, AffinityRouter, ReplicaView
from chameleon.core.request import Request
from chameleon.sim.config import SimConfig, SimResult
from chameleon.sim.engine import Simulator
from chameleon.sim.profile import Profile
from chameleon.workload import AdapterInfo, WorkItem

REPLICA_POLICIES = ("affinity", "pow2")
PENDING_DEPTH = 256  # queued requests whose adapters a replica reports as pending


class ReplicaSim(Simulator):
    """One replica's engine, stepped by the driver: `submit` a request, `advance` the clock.

    Requests get local ids 0, 1, ... in submission order; `served[i]` is the global WorkItem of local
    id i, and `res` lists grow with each submission."""

    def __init__(self, replica_id: str, adapters: Sequence[AdapterInfo], profile: Profile,
                 config: SimConfig) -> None:
        super().__init__([], adapters, profile, config)
        self.replica_id = replica_id
        self.pages = {a.adapter_id: profile.pages_for_rank(a.rank) for a in adapters}
        self.res = SimResult(n=0, ttft=[], e2e=[], load_s=[])
        self.served: list[WorkItem] = []
        self.inbox: deque[Request] = deque()
        self.now = 0.0
        self.prompt_tokens = 0
        self.open: set[int] = set()  # local ids submitted and not seen finished by `take_finished`
        loads = [self.cost.load_time(n) for n in self.nbytes.values()]
        self.mean_load_s = sum(loads) / len(loads) if loads else 0.0

    def submit(self, w: WorkItem) -> None:
        """Queue `w` (arrival >= every earlier submission's)."""
        local = len(self.served)
        self.served.append(w)
        self.prompt_tokens += w.input_tokens
        self.open.add(local)
        for series in (self.res.ttft, self.res.e2e, self.res.load_s):
            series.append(0.0)
        self.inbox.append(Request(local, w.adapter_id, w.input_tokens, w.output_tokens, w.arrival,
                                  true_output_tokens=w.output_tokens))

    def advance(self, until: float) -> None:
        """Run the engine until its clock reaches `until` (or it is idle with nothing submitted)."""
        while self.now < until:
            while self.inbox and self.inbox[0].arrival <= self.now:
                self.sched.add(self.inbox.popleft(), self.now)
            next_arrival = self.inbox[0].arrival if self.inbox else float("inf")
            if not self.running and not self.sched.num_waiting():
                if next_arrival == float("inf"):
                    if until != float("inf"):
                        self.now = self.last_end = until
                    return
                self.now = self.last_end = min(next_arrival, until)
                continue
            self.now = self._iteration(self.now, min(next_arrival, until))

    def take_finished(self) -> list[int]:
        """Global ids of the requests that finished since the last call (what Ray's router hears)."""
        done = [i for i in self.open if self.res.e2e[i] > 0.0]
        self.open.difference_update(done)
        return [self.served[i].id for i in sorted(done)]

    @property
    def load(self) -> int:
        return len(self.running) + self.sched.num_waiting() + len(self.inbox)

    def view(self) -> ReplicaView:
        """What this replica's router would report now."""
        waiting = self.sched.waiting(PENDING_DEPTH)
        pending = {r.adapter_id for r in waiting if r.adapter_id is not None}
        pending |= {r.adapter_id for r in self.inbox if r.adapter_id is not None}
        lengths = self.sched.stats().get("lengths")
        queues = tuple(int(x) for x in lengths) if isinstance(lengths, list) and lengths else ()
        unclassified = self.sched.num_waiting() - sum(queues) + len(self.inbox)
        queues = (*queues[:-1], (queues[-1] if queues else 0) + unclassified)
        resident = frozenset(e.adapter_id for e in self.memory.cache.entries())
        queued = sum(r.input_tokens for r in self.sched.waiting()) + sum(r.input_tokens for r in self.inbox)
        tokens = self.prompt_tokens / len(self.served) if self.served else 0.0
        per_token = self.cost.prefill_time(max(1, round(tokens))) / tokens if tokens else 0.0
        return ReplicaView(self.replica_id, resident, frozenset(pending) - resident,
                           self.memory.pool.free_pages(), queues, len(self.running),
                           prefill_s_per_token=per_token, tokens_per_request=tokens, load_s=self.mean_load_s,
                           step_s=self.est_step, queued_tokens=float(queued))

    def finish(self) -> SimResult:
        self.advance(float("inf"))
        self.res.n = len(self.served)
        self.res.iterations = self.tick
        self.res.memory_stats = self.memory.stats()
        self.res.sched_stats = self.sched.stats()
        self.res.squashes = self.sched.squashed_total
        return self.res


class ReplicaDriver:
    """Places every item on a replica with `policy` and runs the replicas to the end."""

    def __init__(self, replicas: Sequence[ReplicaSim], policy: str, seed: int = 0,
                 stats_period_s: float = 1.0, affinity: AffinityConfig | None = None) -> None:
        if policy not in REPLICA_POLICIES:
            raise ValueError(f"unknown replica policy {policy!r}; choose from: {', '.join(REPLICA_POLICIES)}")
        if stats_period_s <= 0:
            raise ValueError("stats_period_s must be > 0")
        self.replicas = list(replicas)
        self.by_id = {r.replica_id: r for r in self.replicas}
        self.policy, self.period = policy, stats_period_s
        self.rng = random.Random(seed * 7919 + 3)
        self.router = AffinityRouter(affinity)
        self.next_report = 0.0

    def run(self, items: Sequence[WorkItem]) -> list[SimResult]:
        for w in items:
            target = self._pick(w)
            target.advance(w.arrival)
            target.submit(w)
        return [r.finish() for r in self.replicas]

    def _pick(self, w: WorkItem) -> ReplicaSim:
        if self.policy == "pow2" or len(self.replicas) == 1:
            pair = self.rng.sample(self.replicas, min(2, len(self.replicas)))
            for r in pair:
                r.advance(w.arrival)
            return min(pair, key=lambda r: r.load)
        report = w.arrival >= self.next_report
        for r in self.replicas:  # the router hears of every completion at once (Ray's on_request_completed)
            r.advance(w.arrival)
            for gid in r.take_finished():
                self.router.completed(r.replica_id, gid, w.arrival)
            if report:
                self.router.update(r.view(), as_of=w.arrival)
        if report:
            self.next_report = w.arrival + self.period
        pages = self.replicas[0].pages.get(w.adapter_id, 1) if w.adapter_id is not None else 1
        best = self.router.choose(self.by_id, w.adapter_id, pages, tokens=w.input_tokens)[0]
        self.router.assigned(best, w.adapter_id, w.arrival, key=w.id, tokens=w.input_tokens)
        return self.by_id[best]
