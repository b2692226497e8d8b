"""Configuration of the multi-level-queue schedulers (Chameleon and static queues)."""

from __future__ import annotations

from dataclasses import dataclass

from chameleon.core.sched.quotas import size_statistic


@dataclass(frozen=True, slots=True)
class MlqConfig:
    """Every choice the paper leaves open, with its default.

    WRS = (wrs_a*In/MaxIn + wrs_b*Out/MaxOut) * max(AdapterSize/MaxAdapterSize, base_adapter_factor);
    maxima over the sample window; base-model requests (no adapter) use base_adapter_factor.
    Refresh (K-means boundaries + quotas): every t_refresh_s, or earlier once `refresh_requests`
    arrivals were seen since the last refresh (the first refresh uses `first_refresh_requests`);
    None disables the count trigger. Until the first refresh there is one queue holding everything
    (FIFO); `first_refresh_requests` (32) is small so that a fresh server leaves that cold start within
    its first few dozen requests (the paper's T_refresh = 5 min alone would serve FIFO for 5 minutes).
    K rule (elbow): the smallest K in 1..k_max with WCSS_K - WCSS_kmax <= elbow * WCSS_1.
    Quotas: Tok_min_i = S_i * D_i * (1/slo_s + lambda_i); the rest of the capacity split by
    `extra_weights` (default 1, 0.9, 0.8, ...: smaller-request queues get a little more; with
    rest_split "proportional" the rest goes by weight x Tok_min instead).
    S_i, the queue's request size: `size_stat` "mean" (default) or "max" (the paper's "largest
    request") or "pNN". Deviation, on purpose: near saturation (sum of Tok_min above the capacity,
    minima scaled down proportionally) "max" over-provisions queues with a few outliers and starves the
    large-request queue (simulated Azure conv trace, A40 profile, 10.75 rps: P99 TTFT 24.3 s with
    "max" vs 12.1 s with "mean", FIFO 18.5 s); "mean" shares the capacity in proportion to each queue's
    offered occupancy (Little's law). Below saturation both give the same result.
    D (service time) comes from completions in the window; a queue without any uses the context's cost
    model on its arrivals, and `default_service_s` when even that is unavailable.
    Bypass: scan at most `bypass_lookahead` younger requests of a blocked head's queue.
    need: the quota charge of a request. "predicted" is the paper's In + Out_pred + adapter tokens.
    "reserved" (default) is In + max_new_tokens + adapter tokens: our engine reserves KV for
    max_new_tokens up front (non-preemptive), so quotas in that currency really cap each queue's
    memory occupancy; with "predicted", small-request queues can take all memory within their
    quota and starve the larger queues under load.
    adapter_charge: "shared" (default) charges a queue an adapter's tokens once while any of its running
    requests uses it (memory holds it once); "per_request" charges every request (the paper's literal
    `need`). See `chameleon.core.sched.accounts` for why.
    refresh_step_work: a refresh's work per schedule() step, in units of about 0.3-1 us (one window
    sample or queued request touched, 2-3 for the costlier passes): a larger refresh is spread over
    the next steps, over a copy of the window taken when it was due, and its layout takes effect at
    its last step (see `ChameleonScheduler._refresh_job`). 256 keeps a step under 1 ms with 1,000
    queued and a 2,000-sample window on a slow 2-core VM; a full 4,096-sample window with 1,000 queued
    and as many completions takes about 130 steps, a few seconds of serving. None: every refresh
    completes in the step it is due (the decisions of the one-step refresh, at 10-40 ms a step).
    prefill_share (beyond the paper, see `shares`): each queue's share of the per-step prefill token
    budget, "offered" (default: its arrivals' prompt tokens in the window, at least prefill_floor / K),
    "quota" (in proportion to its memory quota) or "none" (the paper: memory quotas only).
    starve_factor / starve_basis / starve_floor_s / starve_block (beyond the paper, see `starvation`):
    a queue head that waited more than starve_factor x its queue's expected wait is admitted first,
    within memory (starve_block: nothing newer while it does not fit). The expected wait: "both"
    (default) = the bound is starve_factor x the moving mean admission wait of all queues (at least
    starve_floor_s), and never more than the SLO the quotas are sized for; "global" the same without
    the SLO cap; "queue" the moving mean of the request's own queue (it drifts up with the very waits
    it should bound: a queue that is always slow looks normal); "slo" starve_factor x the SLO.
    starve_factor 0 disables the bound. With need "reserved" the charge is in whole KV pages
    (pages x block_size + adapter tokens), the unit memory allocates: with raw token counts the page
    rounding lets memory fill before the quotas do, and then the small-request queue takes every
    freed page (simulated long-tail class: P99 TTFT 33 s vs 4.4 s with page-rounded charges).
    compute_fcfs / compute_alpha (beyond the paper, see `binding`): while the share of recent steps
    (exponentially weighted, weight compute_alpha per step that leaves requests queued) in which the
    per-step prefill budget, not memory or a quota, stopped admission is at least compute_fcfs, the MLQ
    admits in arrival order (every queue head counts as starved) and `waiting()` is arrival order; it
    returns to the queues once the share falls below half of that. 0 disables the mode.
    backfill_lookahead (beyond the paper, see `backfill`): while a starved head does not fit (with
    starve_block), offer the next this-many queued requests (in `waiting()` order) for backfilling:
    one goes now if its adapter is resident, its queue's quota covers it, and it cannot delay the
    admission step of the head or of any request offered before it. 0 disables it.
    backfill_evict: may a backfilled request take pages by evicting idle cached adapters? False
    (default): only free pages, so backfilling never shrinks the cache. With eviction it lost live on
    the CPU demo (adapters evicted to backfill were reloaded; benchmarks/README.md, "Conservative
    backfilling"); on free pages only it won in the simulator (4 of 28 class/seed pairs missing against
    5) and in alternating live runs at the memory-bound preset's overload (P99 TTFT lower in 3 of 4
    pairs).
    """

    t_refresh_s: float = 300.0
    first_refresh_requests: int | None = 32
    refresh_requests: int | None = 1000
    window_s: float = 300.0
    window_max_samples: int = 4096
    k_max: int = 4
    elbow: float = 0.05
    slo_s: float = 5.0
    wrs_a: float = 0.4
    wrs_b: float = 0.6
    base_adapter_factor: float = 0.05
    extra_weights: tuple[float, ...] | None = None
    bypass: bool = True
    bypass_lookahead: int = 8
    default_service_s: float = 2.0
    size_stat: str = "mean"
    rest_split: str = "weights"
    need: str = "reserved"
    adapter_charge: str = "shared"
    refresh_step_work: int | None = 256
    prefill_share: str = "offered"
    prefill_floor: float = 0.25
    starve_factor: float = 3.0
    starve_floor_s: float = 1.0
    starve_basis: str = "both"
    starve_block: bool = True
    compute_fcfs: float = 0.3
    compute_alpha: float = 0.02
    backfill_lookahead: int = 16
    backfill_evict: bool = False

    def __post_init__(self) -> None:
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {self.k_max}")
        if self.t_refresh_s <= 0 or self.window_s <= 0 or self.slo_s <= 0:
            raise ValueError("t_refresh_s, window_s and slo_s must be > 0")
        if not 0.0 <= self.elbow < 1.0:
            raise ValueError(f"elbow must be in [0, 1), got {self.elbow}")
        if self.extra_weights is not None and (not self.extra_weights or min(self.extra_weights) < 0):
            raise ValueError("extra_weights must be a non-empty tuple of non-negative numbers")
        size_statistic([1], self.size_stat)  # raises ValueError on an unknown statistic
        if self.rest_split not in ("weights", "proportional"):
            raise ValueError(f"rest_split must be 'weights' or 'proportional', got {self.rest_split!r}")
        if self.need not in ("reserved", "predicted"):
            raise ValueError(f"need must be 'reserved' or 'predicted', got {self.need!r}")
        if self.adapter_charge not in ("shared", "per_request"):
            raise ValueError(f"adapter_charge must be 'shared' or 'per_request', got {self.adapter_charge!r}")
        if self.refresh_step_work is not None and self.refresh_step_work < 1:
            raise ValueError(f"refresh_step_work must be >= 1 or None, got {self.refresh_step_work}")
        if self.prefill_share not in ("offered", "quota", "none"):
            raise ValueError(f"prefill_share must be offered, quota or none, got {self.prefill_share!r}")
        if not 0.0 <= self.prefill_floor <= 1.0:
            raise ValueError(f"prefill_floor must be in [0, 1], got {self.prefill_floor}")
        if self.starve_basis not in ("slo", "queue", "global", "both"):
            raise ValueError(f"starve_basis must be slo, queue, global or both, got {self.starve_basis!r}")
        if not 0.0 <= self.compute_fcfs <= 1.0 or not 0.0 < self.compute_alpha <= 1.0:
            raise ValueError(f"compute_fcfs must be in [0, 1] (0 = off) and compute_alpha in (0, 1], got "
                             f"{self.compute_fcfs}, {self.compute_alpha}")
        if self.starve_factor < 0 or self.starve_floor_s < 0:
            raise ValueError("starve_factor and starve_floor_s must be >= 0 (starve_factor 0 = off)")
        if self.bypass_lookahead < 0 or self.backfill_lookahead < 0 or self.window_max_samples < 1:
            raise ValueError("bypass_lookahead and backfill_lookahead must be >= 0, window_max_samples >= 1")
