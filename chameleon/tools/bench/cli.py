"""`chameleon bench`: replay a trace open-loop against a running system over gRPC streaming and report
P50/P90/P99 TTFT and TBT, throughput, SLO attainment and errors (JSON with every request on --json)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from chameleon.sim.report import json_safe
from chameleon.tools.bench import machine, scrape
from chameleon.tools.bench.loadgen import grpc_address, replay, server_info
from chameleon.tools.bench.stats import summarise
from chameleon.tools.bench.workload import DEFAULT_LENGTH_SCALE, BenchOptions, load_records, plan, population
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.workload import WORKLOADS, TraceError, TraceRecord


def add_workload_flags(p: EnvArgumentParser) -> None:
    """Flags shared with `chameleon bench-compare`."""
    p.add_argument("--trace", required=False, help="trace CSV/JSONL (the shared Azure trace lives at "
                   "../shared/data/traces/azure_llm_2023_conv.csv)")
    p.add_argument("--workload", choices=WORKLOADS, default=None,
                   help="a synthetic workload class instead of --trace (chameleon.workload.classes; its "
                   "arrival process and popularity, lengths in trace units so --length-scale applies)")
    p.add_argument("--adapters", type=int, default=100, help="how many of the served adapters to use")
    p.add_argument("--arrivals", choices=("poisson", "trace"), default="poisson",
                   help="Poisson at --rate, or the trace's timestamps (warped to --rate if given)")
    p.add_argument("--length-scale", type=float, default=DEFAULT_LENGTH_SCALE,
                   help="trace lengths x this, then capped at the server's limits")
    p.add_argument("--max-input", type=int, default=0, help="cap on prompt tokens (0 = server's limit)")
    p.add_argument("--max-output", type=int, default=0, help="cap on output tokens (0 = server's limit)")
    p.add_argument("--popularity-exponent", type=float, default=None,
                   help="power law within a rank class (default 1.0, or the --workload class's)")
    p.add_argument("--base-fraction", type=float, default=0.0, help="share of base-model requests")
    p.add_argument("--seed", type=int, default=0, help="workload seed (same seed = same requests)")
    p.add_argument("--slo-s", type=float, default=None, help="TTFT SLO in seconds")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon bench", description=__doc__)
    p.add_argument("--target", default="grpc://127.0.0.1:8033", help="router gRPC address")
    p.add_argument("--metrics-url", default=None,
                   help="router /metrics for the cache hit rate (default: http://HOST:3000/metrics)")
    p.add_argument("--rate", type=float, default=None, help="requests/s (required for Poisson arrivals)")
    p.add_argument("--duration", type=float, default=60.0, help="replay requests arriving in this many s")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="after the last arrival, wait this long for requests to finish, then cancel them")
    p.add_argument("--json", default=None, help="write the summary and every request here")
    add_workload_flags(p)
    return p


def options(args, rate: float | None, duration_s: float) -> BenchOptions:
    return BenchOptions(rate=rate, duration_s=duration_s, arrivals=args.arrivals,
                        length_scale=args.length_scale, max_input=args.max_input, max_output=args.max_output,
                        exponent=args.popularity_exponent,
                        base_fraction=args.base_fraction, seed=args.seed)


@dataclass(frozen=True, slots=True)
class Run:
    summary: dict
    records: list

    def document(self) -> dict:
        return {"summary": json_safe(self.summary),
                "requests": [json_safe(asdict(r)) for r in self.records]}




async def run_bench(target: str, records: Sequence[TraceRecord], n_adapters: int, opts: BenchOptions, *,
                    metrics_url: str | None, slo_s: float | None, drain_timeout_s: float | None) -> Run:
    """One replay against a running router: plan from its limits and adapters, replay, summarise."""
    info = await server_info(target)
    pop = population([(a, r) for a, r, _ in info.adapters], n_adapters)
    items = plan(records, pop, opts, info.max_total_tokens, info.max_new_tokens)
    if not items:
        raise ValueError("no request arrives within --duration at this rate; raise --duration or --rate")
    before = await asyncio.to_thread(scrape.snapshot, metrics_url)
    load_before = machine.loadavg_1m()
    recs = await replay(target, items, seed=opts.seed, drain_timeout_s=drain_timeout_s)
    load_after = machine.loadavg_1m()
    after = await asyncio.to_thread(scrape.snapshot, metrics_url)
    counters = scrape.delta(before, after)
    loads, used = counters.get("adapter_loads"), len({w.adapter_id for w in items} - {None})
    summary = {"rate": opts.rate, "duration_s": opts.duration_s, **summarise(recs, slo_s), **counters,
               "reloads_min": None if loads is None else max(0.0, loads - used),
               "loadavg_1m_before": load_before, "loadavg_1m_after": load_after, "cpus": machine.cpu_count()}
    return Run(summary, recs)


def format_summary(s: dict) -> str:
    def ms(key: str) -> str:
        v = s.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:.0f} ms"

    def load(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    hit = s.get("cache_hit_rate")
    slo = s.get("slo_attainment")
    slo_s = s.get("slo_s")
    within = "" if slo_s is None else f" (TTFT <= {slo_s:.2f} s)"
    return "\n".join([
        f"requests {s['requests']}  completed {s['completed']}  errors {s['errors']}  "
        f"early stops {s['early_stops']}  max send lag {s['max_send_lag_s'] * 1e3:.0f} ms",
        f"TTFT  P50 {ms('ttft_p50_s')}  P90 {ms('ttft_p90_s')}  P99 {ms('ttft_p99_s')}",
        f"TBT   P50 {ms('tbt_p50_s')}  P90 {ms('tbt_p90_s')}  P99 {ms('tbt_p99_s')}",
        f"throughput {s['throughput_rps']:.2f} req/s  {s['tokens_per_s']:.1f} tokens/s  "
        f"mean request {ms('e2e_mean_s')}",
        f"SLO attainment {'-' if slo is None else f'{slo * 100:.1f}%'}"
        f"{within}  "
        f"cache hit rate {'-' if hit is None else f'{hit * 100:.1f}%'}",
        f"machine load (1-min average) {load(s.get('loadavg_1m_before'))} before, "
        f"{load(s.get('loadavg_1m_after'))} after ({s.get('cpus', '?')} CPUs)",
    ])


def default_metrics_url(target: str) -> str:
    host = urlparse("grpc://" + grpc_address(target)).hostname or "127.0.0.1"
    return f"http://{host}:3000/metrics"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        records = load_records(args)
        if args.arrivals == "poisson" and args.rate is None:
            raise ValueError("Poisson arrivals need --rate (requests/s), or use --arrivals trace")
        opts = options(args, args.rate, args.duration)
        prepare_outputs(files=(args.json,))
        run = asyncio.run(run_bench(args.target, records, args.adapters, opts,
                                    metrics_url=args.metrics_url or default_metrics_url(args.target),
                                    slo_s=args.slo_s, drain_timeout_s=args.drain_timeout))
    except (ValueError, TraceError, ConnectionError) as exc:
        print(f"chameleon bench: {exc}", file=sys.stderr)
        return 2
    print(format_summary(run.summary))
    if args.json:
        Path(args.json).write_text(json.dumps(run.document(), indent=1) + "\n")
    return 0
