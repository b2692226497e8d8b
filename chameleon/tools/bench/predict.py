"""The simulator's prediction of a bench run: the same requests (trace prefix, adapters, arrivals,
seed) through `chameleon.sim` with the profile measured on the live system."""

from __future__ import annotations

from collections.abc import Sequence

from chameleon.sim.config import SimConfig
from chameleon.sim.profile import Profile
from chameleon.sim.runner import POLICIES, SweepSpec, run_one
from chameleon.workload import LengthScale, TraceRecord

# bench-compare config (scheduler/cache) -> simulator policy name
SIM_POLICY = {(sched, cache): name for name, (sched, cache) in POLICIES.items()}


def predict(records: Sequence[TraceRecord], n_requests: int, profile: Profile, config: str, rate: float, *,
            n_adapters: int, ranks: tuple[int, ...], scale: LengthScale, arrivals: str, exponent: float,
            base_fraction: float, seed: int, max_prefill_tokens: int, slo_s: float) -> dict | None:
    """Predicted P50/P99 TTFT of the first `n_requests` records at `rate`; None when the simulator has
    no policy for this configuration."""
    sched, _, cache = config.partition("/")
    policy = SIM_POLICY.get((sched, cache))
    if policy is None or n_requests < 1:
        return None
    spec = SweepSpec(records=tuple(records[:n_requests]), profile=profile,
                     base=SimConfig(max_prefill_tokens=max_prefill_tokens, slo_s=slo_s),
                     n_adapters=n_adapters,
                     ranks=ranks, exponent=exponent, scale=scale, arrivals=arrivals,
                     base_fraction=base_fraction, seed=seed)
    s = run_one(spec, policy, rate)
    return {"policy": policy, "ttft_p50_s": s.ttft_p50_s, "ttft_p99_s": s.ttft_p99_s,
            "cache_hit_rate": s.cache_hit_rate}


def predict_steady(records: Sequence[TraceRecord], n_requests: int, profile: Profile, configs: Sequence[str],
                   rate: float, *, n_adapters: int, ranks: tuple[int, ...], scale: LengthScale, arrivals: str,
                   exponent: float, base_fraction: float, seed: int, max_prefill_tokens: int,
                   slo_s: float) -> list[dict]:
    """The simulator's P50/P99 TTFT of the first `n_requests` records at `rate` for every configuration it
    models: the same workload and profile as `predict`, but with far more requests than one measured run
    (a measured P99 of ~40 requests is about its largest; 1,000 give a P99 that a burst cannot move).
    Ratios are against the first configuration (the baseline)."""
    rows = []
    for config in configs:
        pred = predict(records, n_requests, profile, config, rate, n_adapters=n_adapters, ranks=ranks,
                       scale=scale, arrivals=arrivals, exponent=exponent, base_fraction=base_fraction,
                       seed=seed, max_prefill_tokens=max_prefill_tokens, slo_s=slo_s)
        if pred is not None:
            rows.append({"config": config, "rate": rate, "requests": min(n_requests, len(records)), **pred})
    if rows and rows[0]["config"] == configs[0]:
        base = rows[0]
        for r in rows:
            for k in ("ttft_p50_s", "ttft_p99_s"):
                r[f"{k}_vs_baseline"] = r[k] / base[k] if base[k] else None
    return rows
