"""`chameleon simulate`: replay a trace, or synthetic workload classes, through the simulator for several
policies and loads (one table per workload)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from chameleon.core.sched import MlqConfig
from chameleon.sim.config import SimConfig
from chameleon.sim.profile import Profile
from chameleon.sim.profiles import SHIPPED, load_profile
from chameleon.sim.report import SloBasis, document, format_runs, format_summary
from chameleon.sim.runner import DEFAULT_POLICIES, POLICIES, SweepSpec, run_one, run_sweep
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.workload import WORKLOADS, LengthScale, TraceError, make_workload, read_trace

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
    p.add_argument("--workload", default=None,
                   help=f"synthetic workload class(es), comma-separated, or 'all': {', '.join(WORKLOADS)} "
                   "(instead of --trace; each gets its own table, rates and SLO)")
    p.add_argument("--requests", type=int, default=4000, help="requests per synthetic workload")
    p.add_argument("--rates", default=None, help="arrival rates (requests/s); default 5,...,13 for a trace, "
                   "each class's own sweep for --workload")
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
    p.add_argument("--adapters", type=int, default=None, help="number of adapters (default 100, or the "
                   "workload class's)")
    p.add_argument("--ranks", default="8,16,32,64,128", help="rank classes (adapters split evenly)")
    p.add_argument("--popularity-exponent", type=float, default=None,
                   help="power law within a rank class (default 1.0, or the workload class's)")
    p.add_argument("--base-fraction", type=float, default=0.0, help="share of base-model requests")
    p.add_argument("--length-scale", type=float, default=None,
                   help="trace lengths x this (default: the profile's for a trace, 1 for --workload)")
    p.add_argument("--max-input", type=int, default=0, help="cap on scaled prompt tokens (0 = none)")
    p.add_argument("--max-output", type=int, default=0, help="cap on scaled output tokens (0 = none)")
    p.add_argument("--arrivals", choices=("poisson", "trace"), default="poisson",
                   help="Poisson at each rate, or the trace's timestamps warped to each rate")
    p.add_argument("--limit", type=int, default=0, help="first N trace records only (0 = all)")


def _engine_args(p: EnvArgumentParser) -> None:
    p.add_argument("--predictor", default="online", help="online | oracle | noisy:P (e.g. noisy:0.8)")
    p.add_argument("--slo-s", type=float, default=None, help="TTFT SLO in seconds (default: 5x the mean "
                   "request time of fifo at --slo-rate)")
    p.add_argument("--slo-rate", type=float, default=None,
                   help="the low load that defines the SLO (default: the lowest swept rate)")
    p.add_argument("--mlq", default="", help="MlqConfig fields for the chameleon/static4 policies, "
                   "comma-separated NAME=VALUE (ablations; e.g. starve_factor=0,prefill_share=none)")
    p.add_argument("--max-batch-size", type=int, default=256, help="running requests per batch")
    p.add_argument("--max-prefill-tokens", type=int, default=4096, help="prompt tokens admitted per step")
    p.add_argument("--no-prefetch", action="store_true", help="do not prefetch queued requests' adapters")
    p.add_argument("--seed", type=int, default=0, help="workload and predictor seed")
    p.add_argument("--workers", type=int, default=2, help="parallel simulation processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def mlq_overrides(text: str) -> tuple[tuple[str, object], ...]:
    """`NAME=VALUE,...` -> MlqConfig overrides (numbers, true/false, null = None, else strings)."""
    out: list[tuple[str, object]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, raw = part.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--mlq {part!r}: expected NAME=VALUE")
        out.append((name.strip(), _value(raw.strip())))
    try:
        MlqConfig(**dict(out))
    except TypeError as exc:
        raise ValueError(f"--mlq: {exc}") from None
    return tuple(out)


def _value(raw: str) -> object:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _sources(args) -> list[tuple[str, tuple, str, tuple[float, ...], int, float, float]]:
    """(label, records, arrivals, default rates, adapters, exponent, length scale or 0) per workload."""
    if args.workload and args.trace:
        raise ValueError("give --trace or --workload, not both")
    if args.workload:
        names = list(WORKLOADS) if args.workload.strip() == "all" else \
            [n.strip() for n in args.workload.split(",") if n.strip()]
        out = []
        for name in names:
            w = make_workload(name, args.requests, args.seed)
            out.append((name, w.records, w.arrivals, w.rates, w.n_adapters, w.exponent, 1.0))
        return out
    if not args.trace:
        raise ValueError("--trace or --workload is required (e.g. --trace ../shared/data/traces/"
                         f"azure_llm_2023_conv.csv, or --workload all or one of: {', '.join(WORKLOADS)})")
    records = tuple(read_trace(args.trace))
    if args.limit:
        records = records[: args.limit]
    return [(str(args.trace), records, args.arrivals, (5, 6, 7, 8, 9, 10, 11, 12, 13), 100, 1.0, 0.0)]


def _spec(args, profile: Profile, source: tuple) -> SweepSpec:
    _, records, arrivals, _, n_adapters, exponent, own_scale = source
    scale = args.length_scale if args.length_scale is not None else (own_scale or profile.length_scale)
    base = SimConfig(predictor=args.predictor, max_batch_size=args.max_batch_size,
                     max_prefill_tokens=args.max_prefill_tokens, prefetch=not args.no_prefetch,
                     mlq=mlq_overrides(args.mlq))
    ranks = tuple(int(r) for r in _floats(args.ranks))
    lengths = LengthScale(scale, scale, args.max_input, args.max_output)
    return SweepSpec(records=records, profile=profile, base=base,
                     n_adapters=args.adapters if args.adapters is not None else n_adapters, ranks=ranks,
                     exponent=args.popularity_exponent if args.popularity_exponent is not None else exponent,
                     scale=lengths, arrivals=arrivals, base_fraction=args.base_fraction, seed=args.seed)


def _slo(args, spec: SweepSpec, rates: Sequence[float]) -> tuple[SloBasis, list]:
    """A fixed --slo-s, or 5x fifo's mean request time at --slo-rate (default: the lowest swept rate)."""
    if args.slo_s is not None:
        if args.slo_s <= 0:
            raise ValueError("--slo-s must be > 0")
        return SloBasis(args.slo_s), []
    rate = args.slo_rate if args.slo_rate is not None else min(rates)
    if rate <= 0:
        raise ValueError("--slo-rate must be > 0")
    if not args.no_progress:
        print(f"SLO: running fifo at {rate:g} rps for the mean request time...", file=sys.stderr)
    low = run_one(spec, "fifo", rate)
    mean = low.e2e_mean_s
    return SloBasis(SLO_FACTOR * mean, "fifo", rate, mean, SLO_FACTOR), [low]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)

    def step(s) -> None:
        bar.set_postfix_str(f"{s.policy}@{s.rate:g}", refresh=False)
        bar.update(1)

    return bar, step


def simulate(args) -> list[dict]:
    """One {"name", "doc", "runs"} per workload (the trace, or each synthetic class)."""
    profile = load_profile(args.profile)
    if args.pool_tokens is not None:
        profile = replace(profile, max_pool_tokens=args.pool_tokens)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown policies {unknown}; choose from: {', '.join(POLICIES)}")
    return [_simulate_source(args, profile, policies, src) for src in _sources(args)]


def _simulate_source(args, profile: Profile, policies: list[str], source: tuple) -> dict:
    spec = _spec(args, profile, source)
    rates = sorted(set(_floats(args.rates) if args.rates else source[3]))
    started = time.perf_counter()
    basis, done = _slo(args, spec, rates)
    spec = replace(spec, base=replace(spec.base, slo_s=basis.slo_s))
    tasks = [(p, r) for p in policies for r in rates
             if not any(d.policy == p and d.rate == r for d in done)]
    bar, step = _progress(len(tasks), not args.no_progress)
    runs = run_sweep(spec, tasks, workers=args.workers, progress=step)
    if bar is not None:
        bar.close()
    runs = sorted([*runs, *[d for d in done if d.policy in policies and d.rate in rates]],
                  key=lambda s: (policies.index(s.policy), s.rate))
    meta = {"workload": source[0], "trace": None if args.workload else str(args.trace),
            "requests": len(spec.records), "profile": profile.name,
            "length_scale": spec.scale.input_scale,
            "pool_tokens": profile.num_pages * profile.block_size, "adapters": spec.n_adapters,
            "seed": spec.seed, "cpu_s": sum(r.cpu_s for r in runs),
            "predictor": args.predictor, "workers": args.workers, "rates": rates, "policies": policies,
            "elapsed_s": time.perf_counter() - started}
    return {"name": source[0], "doc": document(runs, basis, meta), "runs": runs}


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
    for item in out:
        _print_doc(item["name"], item["doc"], args.workers, len(out) > 1)
    if args.json:
        docs = {i["name"]: i["doc"] for i in out}
        Path(args.json).write_text(json.dumps(out[0]["doc"] if len(out) == 1 else {"workloads": docs},
                                              indent=2) + "\n")
    if args.plot:
        from chameleon.sim.plot import plot_sweep

        for item in out:
            path = args.plot if len(out) == 1 else _suffixed(args.plot, item["name"])
            plot_sweep(item["runs"], item["doc"], path)
    return 0


def _suffixed(path: str, name: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{name}{p.suffix}"))


def _print_doc(name: str, doc: dict, workers: int, titled: bool) -> None:
    if titled:
        print(f"== workload {name} ==")
    print(format_runs(doc))
    print()
    print(format_summary(doc))
    meta = doc["meta"]
    print(f"\n{len(doc['runs'])} runs in {meta['elapsed_s']:.1f} s wall ({workers} workers; "
          f"{meta['cpu_s']:.1f} s CPU in the simulations)\n")
