"""`chameleon simulate-replicas`: N simulated engines behind adapter-affinity routing or Ray Serve's
default (power of two choices), for several N: cache hit rate, adapter loads and TTFT vs replicas."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chameleon.core.affinity import DEFAULT_MISS_WEIGHT, AffinityConfig
from chameleon.sim.profiles import SHIPPED, load_profile
from chameleon.sim.replica_runner import ReplicaSpec, ReplicaSummary, run_replicas
from chameleon.sim.replicas import REPLICA_POLICIES
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.workload import LengthScale, TraceError, read_trace


def _ints(text: str) -> list[int]:
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or vals[0] < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return vals


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon simulate-replicas", description=__doc__)
    p.add_argument("--trace", required=True, help="trace CSV/JSONL (lengths; arrivals are Poisson)")
    p.add_argument("--replicas", default="1,8,16,32,64", help="replica counts to simulate")
    p.add_argument("--replica-policies", default="pow2,affinity", help=f"of: {', '.join(REPLICA_POLICIES)}")
    p.add_argument("--rate-per-replica", type=float, default=8.0, help="arrivals per second per replica")
    p.add_argument("--requests-per-replica", type=int, default=1000, help="requests per replica")
    p.add_argument("--adapters", type=int, default=100,
                   help="adapters in total (with --adapters-per-replica 0)")
    p.add_argument("--adapters-per-replica", type=int, default=100,
                   help="adapters = this x replicas (tenants grow with the service); 0 = fixed --adapters")
    p.add_argument("--popularity-exponent", type=float, default=1.0, help="power law within a rank class")
    p.add_argument("--profile", default="a40-llama7b", help=f"{', '.join(SHIPPED)} or a profile JSON path")
    p.add_argument("--length-scale", type=float, default=None,
                   help="trace lengths x this (default: the profile's)")
    p.add_argument("--stats-period", type=float, default=1.0,
                   help="seconds between the replicas' routing-stats reports (affinity)")
    p.add_argument("--load-factor", type=float, default=1.25, help="affinity's load bound: x the mean load")
    p.add_argument("--load-slack", type=int, default=4, help="affinity's load bound: at least mean + this")
    p.add_argument("--miss-weight", type=float, default=DEFAULT_MISS_WEIGHT,
                   help="affinity: rank by estimated TTFT, an adapter load counted this many times its "
                        "cost (0: resident adapter first, pure affinity within the load bound)")
    p.add_argument("--seed", type=int, default=0, help="workload and routing seed")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    return p


def _spec(args) -> ReplicaSpec:
    profile = load_profile(args.profile)
    scale = profile.length_scale if args.length_scale is None else args.length_scale
    if args.rate_per_replica <= 0 or args.requests_per_replica < 1:
        raise ValueError("--rate-per-replica must be > 0 and --requests-per-replica >= 1")
    return ReplicaSpec(
        records=tuple(read_trace(args.trace)), profile=profile, rate_per_replica=args.rate_per_replica,
        requests_per_replica=args.requests_per_replica, adapters=args.adapters,
        adapters_per_replica=args.adapters_per_replica, exponent=args.popularity_exponent,
        scale=LengthScale(scale, scale), stats_period_s=args.stats_period,
        affinity=AffinityConfig(args.load_factor, args.load_slack, args.miss_weight), seed=args.seed)


def format_table(rows: Sequence[ReplicaSummary]) -> str:
    """One line per (replicas, policy); `hit/1` = hit rate over the single-replica run's, when run."""
    single = next((r.hit_rate for r in rows if r.replicas == 1), None)
    head = (f"{'replicas':>8} {'policy':<9} {'adapters':>8} {'rps':>6} {'hit':>6} {'hit/1':>6} "
            f"{'loads/req':>9} {'P50 TTFT':>9} {'P99 TTFT':>9} {'thr rps':>8} {'busiest':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.hit_rate / single:6.2f}" if single else f"{'-':>6}"
        lines.append(f"{r.replicas:>8} {r.policy:<9} {r.adapters:>8} {r.rate_rps:>6g} {r.hit_rate:>6.1%} "
                     f"{ratio} {r.loads_per_request:>9.3f} {r.ttft_p50_s * 1e3:>7.0f}ms "
                     f"{r.ttft_p99_s * 1e3:>7.0f}ms {r.throughput_rps:>8.1f} {r.busiest_share:>7.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        prepare_outputs(files=(args.json,))
        spec = _spec(args)
        counts = _ints(args.replicas)
        policies = [p.strip() for p in args.replica_policies.split(",") if p.strip()]
        unknown = [p for p in policies if p not in REPLICA_POLICIES]
        if unknown or not policies:
            raise ValueError(f"unknown replica policies {unknown}; "
                             f"choose from: {', '.join(REPLICA_POLICIES)}")
        rows = [run_replicas(spec, n, p) for n in counts for p in (policies if n > 1 else policies[:1])]
    except (ValueError, TraceError) as exc:
        print(f"chameleon simulate-replicas: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print("\nhit/1: hit rate / the single-replica run's (same load per replica); busiest: requests of the "
          "busiest replica / the mean. pow2 = Ray Serve's default request router.")
    if args.json:
        doc = {"meta": {"trace": args.trace, "profile": spec.profile.name, "seed": spec.seed,
                        "stats_period_s": spec.stats_period_s, "load_factor": args.load_factor,
                        "load_slack": args.load_slack, "miss_weight": args.miss_weight},
               "rows": [r.row() for r in rows]}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
