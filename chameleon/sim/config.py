"""Simulator configuration and raw per-run result."""

from __future__ import annotations

from dataclasses import dataclass, field

from chameleon.core.predictor import OutputPredictor, make_predictor


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One engine's policy and limits.

    max_batch_size / max_prefill_tokens: scheduler limits (TGI's max_batch_prefill_tokens default 4096).
    prefetch: load queued requests' adapters into free pages ahead of their batch (S-LoRA and
    Chameleon both do). slo_s: the TTFT SLO handed to the MLQ quota sizing.
    max_idle_skip_s: while requests wait, schedule() runs at least this often (besides every arrival
    and every finish), so time-driven scheduler logic (queue refresh) is not starved.
    mlq: extra MlqConfig fields (name, value) for the chameleon and static4 schedulers (ablations).
    """

    scheduler: str = "fifo"
    cache: str = "none"
    predictor: str = "online"
    max_batch_size: int = 256
    max_prefill_tokens: int = 4096
    prefetch: bool = True
    prefetch_depth: int = 32
    slo_s: float = 5.0
    cache_window_s: float = 300.0
    max_idle_skip_s: float = 0.25
    seed: int = 0
    mlq: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.max_idle_skip_s <= 0 or self.slo_s <= 0 or self.cache_window_s <= 0:
            raise ValueError("max_idle_skip_s, slo_s and cache_window_s must be > 0")
        if self.prefetch_depth < 1:
            raise ValueError("prefetch_depth must be >= 1")
        make_sim_predictor(self.predictor, self.seed)


@dataclass(slots=True)
class SimResult:
    """Raw outcome of one run; per-request lists are indexed by request id (WorkItem.id)."""

    n: int
    ttft: list[float]
    e2e: list[float]
    load_s: list[float]                     # synchronous adapter-load time charged to the request
    tbt_gaps: list[float] = field(default_factory=list)
    tbt_weights: list[int] = field(default_factory=list)   # decoding requests sharing each gap
    finished: int = 0
    last_finish: float = 0.0
    bytes_loaded: int = 0
    loads: int = 0
    prefetches: int = 0
    load_stall_s: float = 0.0               # time steps waited for adapter loads (whole batch stalled)
    squashes: int = 0
    iterations: int = 0
    memory_stats: dict = field(default_factory=dict)
    sched_stats: dict = field(default_factory=dict)


def make_sim_predictor(spec: str, seed: int = 0) -> OutputPredictor:
    """`online`, `oracle` or `noisy:P` (noisy oracle right with probability P, e.g. noisy:0.8)."""
    name, _, arg = spec.partition(":")
    if name == "noisy":
        try:
            p = float(arg) if arg else 0.8
        except ValueError:
            raise ValueError(f"predictor {spec!r}: the accuracy after 'noisy:' must be a number") from None
        return make_predictor("noisy", p=p, seed=seed)
    if arg:
        raise ValueError(f"predictor {spec!r}: only 'noisy' takes an argument (noisy:0.8)")
    return make_predictor(name)
