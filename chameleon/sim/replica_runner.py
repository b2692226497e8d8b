"""One multi-replica simulation -> summary numbers (chameleon/sim/replicas.py does the routing)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from chameleon.core.affinity import AffinityConfig
from chameleon.sim.config import SimConfig
from chameleon.sim.metrics import percentile, throughput
from chameleon.sim.profile import Profile
from chameleon.sim.replicas import ReplicaDriver, ReplicaSim
from chameleon.workload import (
    PAPER_RANKS,
    LengthScale,
    TraceRecord,
    WorkloadOptions,
    build_workload,
    make_population,
)


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """A scale-out run: `replicas` engines at `rate_per_replica` each, `requests_per_replica` requests
    each (the trace is cycled when it is shorter), over `adapters` adapters in total, or
    `adapters_per_replica` x replicas when that is set (more tenants as the service grows)."""

    records: tuple[TraceRecord, ...]
    profile: Profile
    base: SimConfig = field(default_factory=lambda: SimConfig(scheduler="chameleon", cache="chameleon"))
    rate_per_replica: float = 8.0
    requests_per_replica: int = 1500
    adapters: int = 100
    adapters_per_replica: int = 0
    ranks: tuple[int, ...] = PAPER_RANKS
    exponent: float = 1.0
    scale: LengthScale = field(default_factory=LengthScale)
    stats_period_s: float = 1.0
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    seed: int = 0

    def n_adapters(self, replicas: int) -> int:
        return self.adapters_per_replica * replicas if self.adapters_per_replica else self.adapters


@dataclass(frozen=True, slots=True)
class ReplicaSummary:
    policy: str
    replicas: int
    adapters: int
    rate_rps: float
    requests: int
    hit_rate: float
    loads_per_request: float
    ttft_p50_s: float
    ttft_p99_s: float
    throughput_rps: float
    busiest_share: float  # requests of the busiest replica / the mean per replica

    def row(self) -> dict[str, float | int | str]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def run_replicas(spec: ReplicaSpec, replicas: int, policy: str) -> ReplicaSummary:
    """Simulate `replicas` engines behind `policy` (deterministic under spec.seed)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    n = spec.requests_per_replica * replicas
    records = (spec.records * (n // len(spec.records) + 1))[:n]
    pop = make_population(spec.n_adapters(replicas), spec.ranks)
    rate = spec.rate_per_replica * replicas
    opts = WorkloadOptions(rate=rate, scale=spec.scale, exponent=spec.exponent, seed=spec.seed)
    items = build_workload(records, pop, opts)
    config = replace(spec.base, seed=spec.seed)
    sims = [ReplicaSim(f"r{i}", pop, spec.profile, config) for i in range(replicas)]
    driver = ReplicaDriver(sims, policy, spec.seed, spec.stats_period_s, spec.affinity)
    results = driver.run(items)
    hits = sum(r.memory_stats.get("hits", 0) for r in results)
    misses = sum(r.memory_stats.get("misses", 0) for r in results)
    loads = sum(r.loads + r.prefetches for r in results)
    ttft = sorted(t for r in results for t in r.ttft)
    finished = sum(r.finished for r in results)
    last = max(r.last_finish for r in results)
    per_replica = [r.n for r in results]
    return ReplicaSummary(
        policy=policy, replicas=replicas, adapters=len(pop), rate_rps=rate, requests=finished,
        hit_rate=hits / (hits + misses) if hits + misses else 0.0, loads_per_request=loads / max(1, n),
        ttft_p50_s=percentile(ttft, 50), ttft_p99_s=percentile(ttft, 99),
        throughput_rps=throughput(finished, items[0].arrival, last),
        busiest_share=max(per_replica) / statistics.fmean(per_replica),
    )

