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
