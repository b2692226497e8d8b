"""`chameleon simulate`: replay a trace through the simulator for several policies and loads."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from chameleon.sim.config import SimConfig
from chameleon.sim.profile import Profile
from chameleon.sim.profiles import SHIPPED, load_profile
from chameleon.sim.report import SloBasis, document, format_runs, format_summary
from chameleon.sim.runner import DEFAULT_POLICIES, POLICIES, SweepSpec, run_one, run_sweep
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.workload import LengthScale, TraceError, read_trace

SLO_FACTOR = 5.0   # paper: TTFT SLO = 5x the mean request execution time at low load


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise ValueError(f"expected positive numbers, got {text!r}")
    return vals


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon simulate", description=__doc__)
    p.add_argument("--trace", required=False, help="trace CSV/JSONL (the shared Azure trace lives at "
                   "../shared/data/traces/azure_llm_2023_conv.csv)")
    p.add_argument("--rates", default="5,6,7,8,9,10,11,12,13", help="arrival rates (requests/s)")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help=f"of: {', '.join(POLICIES)}")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="draw P99 TTFT vs load and the high-load TTFT CDF (PNG)")
    p.add_argument("--profile", default="a40-llama7b", help=f"{', '.join(SHIPPED)} or a profile JSON path")
    p.add_argument("--pool-tokens", type=int, default=None,
                   help="cap the KV/adapter pool at this many tokens (S-LoRA's max_total_token_num)")
    p.add_argument("--show-profile", action="store_true", help="print the profile with sources and exit")
    _workload_args(p)
    _engine_args(p)
    return p


def _workload_args(p: EnvArgumentParser) -> None:
    p.add_argument("--adapters", type=int, default=100, help="number of adapters")
    p.add_argument("--ranks", default="8,16,32,64,128", help="rank classes (adapters split evenly)")
    p.add_argument("--popularity-exponent", type=float, default=1.0, help="power law within a rank class")
    p.add_argument("--base-fraction", type=float, default=0.0, help="share of base-model requests")
    p.add_argument("--length-scale", type=float, default=None,
                   help="trace lengths x this (default: the profile's)")
    p.add_argument("--max-input", type=int, default=0, help="cap on scaled prompt tokens (0 = none)")
    p.add_argument("--max-output", type=int, default=0, help="cap on scaled output tokens (0 = none)")
    p.add_argument("--arrivals", choices=("poisson", "trace"), default="poisson",
                   help="Poisson at each rate, or the trace's timestamps warped to each rate")
    p.add_argument("--limit", type=int, default=0, help="first N trace records only (0 = all)")


def _engine_args(p: EnvArgumentParser) -> None:
    p.add_argument("--predictor", default="online", help="online | oracle | noisy:P (e.g. noisy:0.8)")
    p.add_argument("--slo-s", type=float, default=None, help="TTFT SLO in seconds (default: 5x the mean "
                   "request time of fifo at --slo-rate)")
    p.add_argument("--slo-rate", type=float, default=6.0, help="the low load that defines the SLO")
    p.add_argument("--max-batch-size", type=int, default=256, help="running requests per batch")
    p.add_argument("--max-prefill-tokens", type=int, default=4096, help="prompt tokens admitted per step")
    p.add_argument("--no-prefetch", action="store_true", help="do not prefetch queued requests' adapters")
    p.add_argument("--seed", type=int, default=0, help="workload and predictor seed")
    p.add_argument("--workers", type=int, default=2, help="parallel simulation processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _spec(args, profile: Profile) -> SweepSpec:
    if not args.trace:
        raise ValueError("--trace is required (e.g. ../shared/data/traces/azure_llm_2023_conv.csv)")
    records = tuple(read_trace(args.trace))
    if args.limit:
        records = records[: args.limit]
    scale = profile.length_scale if args.length_scale is None else args.length_scale
    base = SimConfig(predictor=args.predictor, max_batch_size=args.max_batch_size,
                     max_prefill_tokens=args.max_prefill_tokens, prefetch=not args.no_prefetch)
    ranks = tuple(int(r) for r in _floats(args.ranks))
    lengths = LengthScale(scale, scale, args.max_input, args.max_output)
    return SweepSpec(records=records, profile=profile, base=base, n_adapters=args.adapters, ranks=ranks,
                     exponent=args.popularity_exponent, scale=lengths, arrivals=args.arrivals,
                     base_fraction=args.base_fraction, seed=args.seed)


def _slo(args, spec: SweepSpec) -> tuple[SloBasis, list]:
    if args.slo_s is not None:
        if args.slo_s <= 0:
            raise ValueError("--slo-s must be > 0")
        return SloBasis(args.slo_s), []
    if not args.no_progress:
        print(f"SLO: running fifo at {args.slo_rate:g} rps for the mean request time...", file=sys.stderr)
    low = run_one(spec, "fifo", args.slo_rate)
    mean = low.e2e_mean_s
    return SloBasis(SLO_FACTOR * mean, "fifo", args.slo_rate, mean, SLO_FACTOR), [low]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)

    def step(s) -> None:
        bar.set_postfix_str(f"{s.policy}@{s.rate:g}", refresh=False)
        bar.update(1)

    return bar, step


def simulate(args) -> dict:
    profile = load_profile(args.profile)
    if args.pool_tokens is not None:
        profile = replace(profile, max_pool_tokens=args.pool_tokens)
    spec = _spec(args, profile)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown policies {unknown}; choose from: {', '.join(POLICIES)}")
    rates = sorted(set(_floats(args.rates)))
    started = time.perf_counter()
    basis, done = _slo(args, spec)
    spec = replace(spec, base=replace(spec.base, slo_s=basis.slo_s))
    tasks = [(p, r) for p in policies for r in rates
             if not any(d.policy == p and d.rate == r for d in done)]
    bar, step = _progress(len(tasks), not args.no_progress)
    runs = run_sweep(spec, tasks, workers=args.workers, progress=step)
    if bar is not None:
        bar.close()
    runs = sorted([*runs, *[d for d in done if d.policy in policies and d.rate in rates]],
                  key=lambda s: (policies.index(s.policy), s.rate))
    meta = {"trace": str(args.trace), "requests": len(spec.records), "profile": profile.name,
            "length_scale": spec.scale.input_scale,
            "pool_tokens": profile.num_pages * profile.block_size, "adapters": spec.n_adapters,
            "seed": spec.seed, "cpu_s": sum(r.cpu_s for r in runs),
            "predictor": args.predictor, "workers": args.workers, "rates": rates, "policies": policies,
            "elapsed_s": time.perf_counter() - started}
    return {"doc": document(runs, basis, meta), "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.show_profile:
            print(json.dumps(load_profile(args.profile).to_dict(), indent=2))
            return 0
        prepare_outputs(files=(args.json, args.plot))
        out = simulate(args)
    except (ValueError, TraceError) as exc:
        print(f"chameleon simulate: {exc}", file=sys.stderr)
        return 2
    doc = out["doc"]
    print(format_runs(doc))
    print()
    print(format_summary(doc))
    meta = doc["meta"]
    print(f"\n{len(doc['runs'])} runs in {meta['elapsed_s']:.1f} s wall ({args.workers} workers; "
          f"{meta['cpu_s']:.1f} s CPU in the simulations)")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if args.plot:
        from chameleon.sim.plot import plot_sweep

        plot_sweep(out["runs"], doc, args.plot)
    return 0
