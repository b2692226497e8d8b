"""Policies by name, one simulated run -> summary numbers, and a parallel sweep over (policy, rate)."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from chameleon.sim.config import SimConfig
from chameleon.sim.engine import Simulator
from chameleon.sim.metrics import percentile, throughput, weighted_percentile
from chameleon.sim.profile import Profile
from chameleon.workload import (
    PAPER_RANKS,
    LengthScale,
    TraceRecord,
    WorkloadOptions,
    build_workload,
    make_population,
)

# name -> (scheduler, adapter cache). static4 keeps Chameleon's cache: the paper compares static and
# dynamic queues inside Chameleon, so only the queue rule differs.
POLICIES: dict[str, tuple[str, str]] = {
    "fifo": ("fifo", "none"),                       # S-LoRA
    "sjf": ("sjf", "none"),
    "static4": ("static4", "chameleon"),
    "chameleon": ("chameleon", "chameleon"),
    "chameleon-nocache": ("chameleon", "none"),     # scheduler only
    "chameleon-nosched": ("fifo", "chameleon"),     # cache only
    "chameleon-lru": ("chameleon", "lru"),
    "chameleon-fairshare": ("chameleon", "fairshare"),
}
DEFAULT_POLICIES = ("fifo", "sjf", "static4", "chameleon", "chameleon-nocache", "chameleon-nosched")


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """Everything a worker needs to rebuild a run (picklable)."""

    records: tuple[TraceRecord, ...]
    profile: Profile
    base: SimConfig = field(default_factory=SimConfig)
    n_adapters: int = 100
    ranks: tuple[int, ...] = PAPER_RANKS
    exponent: float = 1.0
    scale: LengthScale = field(default_factory=LengthScale)
    arrivals: str = "poisson"
    base_fraction: float = 0.0
    seed: int = 0


@dataclass(slots=True)
class RunSummary:
    policy: str
    rate: float
    requests: int
    ttft_p50_s: float
    ttft_p99_s: float
    ttft_mean_s: float
    tbt_p99_s: float
    throughput_rps: float
    e2e_mean_s: float
    cache_hit_rate: float
    adapter_bytes_loaded: int
    adapter_loads: int
    prefetches: int
    load_stall_s: float
    squashes: int
    iterations: int
    wall_s: float
    cpu_s: float
    ttft_sorted: list[float] = field(default_factory=list, repr=False)

    def json_row(self, slo_s: float) -> dict:
        row = {k: getattr(self, k) for k in self.__slots__ if k != "ttft_sorted"}  # type: ignore[attr-defined]
        row["slo_attainment"] = slo_attainment_sorted(self.ttft_sorted, slo_s)
        return row


def slo_attainment_sorted(ttft_sorted: Sequence[float], slo_s: float) -> float:
    import bisect

    return bisect.bisect_right(ttft_sorted, slo_s) / len(ttft_sorted) if ttft_sorted else float("nan")


def sim_config(spec: SweepSpec, policy: str) -> SimConfig:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from: {', '.join(POLICIES)}")
    sched, cache = POLICIES[policy]
    return replace(spec.base, scheduler=sched, cache=cache, seed=spec.seed)


def run_one(spec: SweepSpec, policy: str, rate: float) -> RunSummary:
    """Simulate one (policy, rate) and reduce it to summary numbers."""
    started, cpu = time.perf_counter(), time.process_time()
    pop = make_population(spec.n_adapters, spec.ranks)
    opts = WorkloadOptions(rate=rate, arrivals=spec.arrivals, scale=spec.scale, exponent=spec.exponent,
                           base_fraction=spec.base_fraction, seed=spec.seed)
    items = build_workload(spec.records, pop, opts)
    res = Simulator(items, pop, spec.profile, sim_config(spec, policy)).run()
    ttft = sorted(res.ttft)
    return RunSummary(
        policy=policy, rate=rate, requests=res.finished,
        ttft_p50_s=percentile(ttft, 50), ttft_p99_s=percentile(ttft, 99), ttft_mean_s=statistics.fmean(ttft),
        tbt_p99_s=weighted_percentile(res.tbt_gaps, res.tbt_weights, 99),
        throughput_rps=throughput(res.finished, items[0].arrival, res.last_finish),
        e2e_mean_s=statistics.fmean(res.e2e), cache_hit_rate=float(res.memory_stats.get("hit_rate", 0.0)),
        adapter_bytes_loaded=res.bytes_loaded, adapter_loads=res.loads, prefetches=res.prefetches,
        load_stall_s=res.load_stall_s,
        squashes=res.squashes, iterations=res.iterations, wall_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu,
        ttft_sorted=ttft,
    )


def _run_task(task: tuple[SweepSpec, str, float]) -> RunSummary:
    return run_one(*task)


def run_sweep(spec: SweepSpec, tasks: Iterable[tuple[str, float]], workers: int = 2,
              progress: Callable[[RunSummary], None] | None = None) -> list[RunSummary]:
    """Run every (policy, rate); results sorted by (policy order given, rate). Deterministic: each run
    depends only on its spec, never on which worker ran it or when."""
    todo = list(tasks)
    order = {t: i for i, t in enumerate(todo)}
    # Costliest first for load balance: MLQ schedulers and low rates (more iterations) take longest.
    ranked = sorted(todo, key=lambda t: (POLICIES[t[0]][0] in ("fifo", "sjf"), t[1]))
    out: list[RunSummary] = []
    if workers <= 1 or len(todo) <= 1:
        for policy, rate in ranked:
            out.append(run_one(spec, policy, rate))
            if progress:
                progress(out[-1])
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(workers, len(todo))) as pool:
            for summary in pool.imap_unordered(_run_task, [(spec, p, r) for p, r in ranked], chunksize=1):
                out.append(summary)
                if progress:
                    progress(summary)
    return sorted(out, key=lambda s: order[(s.policy, s.rate)])
