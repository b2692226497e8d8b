"""`chameleon bench-compare`: for each SCHEDULER/ADAPTER-CACHE configuration, launch the system
(`chameleon launch`), warm it up, replay the same requests at each rate, and compare against
`fifo/none` (S-LoRA's behaviour): one table, throughput at the TTFT SLO, P50/P99 TTFT at the high load,
cache hit rates. Also measures a simulator cost profile of this system and prints the simulator's
prediction beside each measurement."""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from chameleon.sim.profile import Profile
from chameleon.sim.report import json_safe
from chameleon.tools.bench import machine, report, system
from chameleon.tools.bench.cli import add_workload_flags, options, run_bench
from chameleon.tools.bench.loadgen import server_info
from chameleon.tools.bench.predict import predict, predict_steady
from chameleon.tools.bench.profile import measure
from chameleon.tools.bench.ramp import ramp, ramp_steps, warp
from chameleon.tools.bench.ramp import unit_time as ramp_unit_time
from chameleon.tools.bench.stats import BASELINE, misses_slo, slo_from_low_load, summarise, sweep_stops
from chameleon.tools.bench.workload import lengths, load_records, plan, population
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.tools.launch.args import ADAPTER_CACHES, SCHEDULERS
from chameleon.workload import LengthScale, TraceError, TraceRecord

DEFAULT_CONFIGS = "fifo/none,sjf/none,chameleon/chameleon,chameleon/none,fifo/chameleon"
# sweep = these x the highest rate the probe's ramp sustained: from light load to well past saturation, so
# that the baseline misses the SLO inside the sweep and the better configurations' crossing is bracketed
PROBE_FRACTIONS = (0.3, 0.65, 1.0, 1.35, 1.8)
RAMP_START_RPS, RAMP_GROWTH = 0.3, 1.35     # the probe's ramp: 0.3 rps for 12 s, then x1.35 every 8 s
RAMP_FIRST_STEP_S, RAMP_STEP_S = 12.0, 8.0
EXTEND_GROWTH = 1.3  # rates past the sweep for a configuration that never missed the SLO (--extend)
DEFAULT_LAUNCH = "--memory-budget 4294967296 --max-batch-prefill-tokens 1024 --max-concurrent-requests 4096"
# Presets: the `chameleon launch` flags of each (--launch-args replaces them). "memory-bound": on the
# SmolLM2 demo a 1.2 GB budget leaves a pool of about 660 pages of 720 KiB (weights and activations take
# the rest): the 100 adapters need about 1,500 pages, so beside a busy batch's KV (~200 pages) about 30%
# of them fit; adapters are evicted and reloaded, queued-adapter protection, bypass and the MLQ quotas
# bind, and KV pressure shrinks the cache (the paper's regime on a GPU).
PRESETS = {
    "default": DEFAULT_LAUNCH,
    "memory-bound": "--memory-budget 1200000000 --max-batch-prefill-tokens 1024 "
                    "--max-concurrent-requests 4096",
}


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon bench-compare", description=__doc__)
    p.add_argument("--model-id", type=Path, default=None, help="model folder (default: the demo model)")
    p.add_argument("--adapter-dir", type=Path, default=None, help="adapter folder (default: the demo's)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help=f"SCHEDULER/ADAPTER-CACHE,... (schedulers {', '.join(SCHEDULERS)}; caches "
                   f"{', '.join(ADAPTER_CACHES)}); ratios are against {BASELINE}")
    p.add_argument("--rates", default=None, help="requests/s, comma-separated (default: a sweep of "
                   f"{'/'.join(map(str, PROBE_FRACTIONS))} x the highest rate an open-loop ramp sustains "
                   "within the SLO)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up load per configuration")
    p.add_argument("--probe", type=float, default=100.0,
                   help=f"at most this many seconds of the capacity probe's open-loop ramp ({RAMP_START_RPS} "
                   f"rps, x{RAMP_GROWTH} every {RAMP_STEP_S:.0f} s, until TTFT crosses the SLO)")
    p.add_argument("--full-sweep", action="store_true",
                   help="run every rate for every configuration (default: a configuration stops at its "
                   "first SLO miss at or above the high load; higher rates would miss too)")
    p.add_argument("--extend", type=int, default=2,
                   help="with the automatic sweep (no --rates), a configuration that still meets the SLO "
                   f"at the sweep's top rate runs up to this many more rates (x{EXTEND_GROWTH} each, "
                   "stopping at its first miss), so that its throughput at the SLO is bracketed instead "
                   "of a lower bound (0 = never)")
    p.add_argument("--drain-timeout", type=float, default=45.0,
                   help="after the last arrival of a rate, wait this long, then cancel what is left")
    p.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help="system setting: default (a 4 GiB pool: all 100 demo adapters fit) or memory-bound "
                   "(a 1.2 GB budget: about 30%% of them fit beside a busy batch, so the cache evicts and "
                   "reloads, quotas bind and KV pressure shrinks the cache)")
    p.add_argument("--launch-args", default=None,
                   help="further `chameleon launch` flags (default: the --preset's: "
                   + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()) + ")")
    p.add_argument("--plot", default=None, help="P99 TTFT vs rate and TTFT CDFs (PNG)")
    p.add_argument("--json", default=None, help="write the comparison here")
    p.add_argument("--profile-out", default=None,
                   help="write the measured simulator profile here (default: next to --json, else "
                   "bench-profile.json)")
    p.add_argument("--steady-requests", type=int, default=1000,
                   help="after the measurements, simulate this many requests at the high load for every "
                   "configuration with the measured profile: a low-noise P99 beside the measured one "
                   "(0 = skip)")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp"), help="where each launch's log goes")
    add_workload_flags(p)
    return p


def parse_configs(text: str) -> list[str]:
    out: list[str] = []
    for c in (x.strip() for x in text.split(",") if x.strip()):
        sched, _, cache = c.partition("/")
        if sched not in SCHEDULERS or cache not in ADAPTER_CACHES:
            raise ValueError(f"--configs {c!r}: expected SCHEDULER/CACHE with scheduler in {SCHEDULERS} "
                             f"and cache in {ADAPTER_CACHES}")
        out.append(c)
    if not out:
        raise ValueError("--configs: give at least one SCHEDULER/CACHE")
    # the baseline runs first: its low-load run defines the SLO and its probe the sweep
    return sorted(dict.fromkeys(out), key=lambda c: c != BASELINE)


def parse_rates(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        rates = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--rates {text!r}: expected comma-separated numbers") from None
    if not rates or rates[0] <= 0:
        raise ValueError(f"--rates {text!r}: rates must be > 0")
    return rates


async def _probe(args, sysm: system.System, records: Sequence[TraceRecord], ctx: Context) -> list[float]:
    """The open-loop ramp (chameleon/tools/bench/ramp.py) on the first configuration; the sweep is
    PROBE_FRACTIONS x the highest rate it sustained."""
    info = await server_info(sysm.target)
    pop = population([(a, r) for a, r, _ in info.adapters], args.adapters)
    steps = ramp_steps(RAMP_START_RPS, RAMP_GROWTH, RAMP_STEP_S, RAMP_FIRST_STEP_S, args.probe)
    unit = replace(options(args, 1.0, ramp_unit_time(steps)), seed=args.seed + 7)
    items = warp(plan(records, pop, unit, info.max_total_tokens, info.max_new_tokens), steps)
    load = machine.loadavg_1m()
    res = await ramp(sysm.target, items, steps, limit_s=args.slo_s, seed=args.seed + 7)
    load_after = machine.loadavg_1m()
    ctx.probe = {"sustained_rps": res.sustained_rps, "crossed_rps": res.crossed_rps, "limit_s": res.limit_s,
                 "steps": res.steps, "elapsed_s": res.elapsed_s, "loadavg_1m_before": load,
                 "loadavg_1m_after": load_after}
    steps_text = ", ".join(f"{st['rate']:.2f}:{st['late']}/{st['requests']}" for st in res.steps)
    print(f"capacity probe (open-loop ramp, TTFT limit {res.limit_s:.2f} s; rate:late/requests per step: "
          f"{steps_text}): sustained {_rps(res.sustained_rps)}, crossed at {_rps(res.crossed_rps)} "
          f"({res.elapsed_s:.0f} s, load average {_load(load)} -> {_load(load_after)})", flush=True)
    if res.sustained_rps is None:
        raise RuntimeError(f"the capacity probe's first step ({RAMP_START_RPS} rps) already missed the "
                           f"{res.limit_s:.2f} s TTFT limit; give --rates")
    if res.crossed_rps is None:
        print(f"capacity probe: never crossed the limit within {args.probe:.0f} s; the sweep may not "
              "reach saturation (raise --probe or give --rates)", flush=True)
    return sorted({round(res.sustained_rps * f, 2) for f in PROBE_FRACTIONS})


def _rps(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} rps"


def _load(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


@dataclass(slots=True)
class Context:
    """What one comparison learns as it goes: the served adapters and limits (from the first system),
    the measured profile (from the first configuration with a cache), the rates (given or probed), the SLO
and the high load as soon as they are known (they decide where a configuration's sweep may stop)."""

    rates: list[float] | None
    slo_s: float | None = None          # given, or known after the first configuration's lowest rate
    high_load: float | None = None      # the first configuration's first SLO miss, once it has finished
    probe: dict | None = None
    skipped: dict[str, list[float]] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()
    scale: LengthScale | None = None
    profile: Profile | None = None


async def _learn(args, ctx: Context, target: str) -> None:
    if ctx.scale is not None:
        return
    info = await server_info(target)
    pop = population([(a, r) for a, r, _ in info.adapters], args.adapters)
    ctx.ranks = tuple(sorted({a.rank for a in pop}))
    ctx.scale = lengths(options(args, 1.0, 1.0), info.max_total_tokens, info.max_new_tokens)


async def _config(args, config: str, spec: system.SystemSpec, records: Sequence[TraceRecord],
                  ctx: Context, first: bool) -> list[dict]:
    sched, _, cache = config.partition("/")
    log = args.log_dir / f"bench-compare-{sched}-{cache}.log"
    t0 = time.perf_counter()
    spec = with_slo(spec, sched, ctx.slo_s)
    sysm = system.spawn(spec, sched, cache, log)  # tied: it dies with the benchmark
    await asyncio.to_thread(sysm.wait_ready)
    print(f"[{config}] up in {time.perf_counter() - t0:.0f} s (log {log})", flush=True)
    try:
        await _learn(args, ctx, sysm.target)
        if ctx.rates is None:
            ctx.rates = await _probe(args, sysm, records, ctx)
        if ctx.profile is None and cache != "none":
            info = await server_info(sysm.target)
            ctx.profile = await measure(sysm.target, sysm.metrics_url, info, length_scale=args.length_scale,
                                        name=f"measured-{sched}-{cache}")
        rates = ctx.rates
        warm = replace(options(args, rates[0], args.warmup), seed=args.seed + 1000)
        await run_bench(sysm.target, records, args.adapters, warm, metrics_url=None, slo_s=None,
                        drain_timeout_s=args.drain_timeout)
        rows = []
        extend = 0 if args.rates else args.extend  # rates given: exactly those
        for i, rate in enumerate(_with_extension(rates, rows, ctx, extend)):
            run = await run_bench(sysm.target, records, args.adapters, options(args, rate, args.duration),
                                  metrics_url=sysm.metrics_url, slo_s=None,
                                  drain_timeout_s=args.drain_timeout)
            s = run.summary
            rows.append({"config": config, **s, "ttft_sorted": sorted(
                r.ttft_s for r in run.records if r.ok), "_records": run.records})
            if ctx.slo_s is None:
                ctx.slo_s = slo_from_low_load(s["e2e_mean_s"])
            miss = misses_slo(s["ttft_p99_s"], ctx.slo_s)
            print(f"[{config}] {rate:.2f} rps: {s['requests']} requests, P50 TTFT "
                  f"{s['ttft_p50_s']:.3f} s, P99 {s['ttft_p99_s']:.3f} s ({'misses' if miss else 'meets'} "
                  f"the {ctx.slo_s:.2f} s SLO), errors {s['errors']}, load average "
                  f"{_load(s.get('loadavg_1m_before'))} -> {_load(s.get('loadavg_1m_after'))}", flush=True)
            high = ctx.high_load if ctx.high_load is not None else (rate if first else max(rates))
            if i >= len(rates) and miss:
                break  # an extension rate missed: the crossing is bracketed
            if sweep_stops(rate, s["ttft_p99_s"], ctx.slo_s, high) and not args.full_sweep \
                    and i + 1 < len(rates):
                ctx.skipped[config] = rates[i + 1:]
                print(f"[{config}] missed the SLO at {rate:.2f} rps (>= the high load): higher rates "
                      f"{rates[i + 1:]} skipped (--full-sweep runs them)", flush=True)
                break
        if first:  # rates the baseline's extension added are run by every configuration
            ctx.rates = sorted({*rates, *(r["rate"] for r in rows)})
            ctx.high_load = next((r["rate"] for r in rows if misses_slo(r["ttft_p99_s"], ctx.slo_s)),
                                 max(ctx.rates))
    finally:
        await asyncio.to_thread(sysm.stop)
    return rows


def with_slo(spec: system.SystemSpec, scheduler: str, slo_s: float | None) -> system.SystemSpec:
    """The comparison's SLO handed to a Chameleon system it launches (--mlq-slo-s: its quota sizing and
    starvation bound), once known (given, or from the baseline's low-load run, which runs first);
    --mlq-slo-s in --launch-args wins."""
    if scheduler != "chameleon" or slo_s is None or "--mlq-slo-s" in spec.extra:
        return spec
    return replace(spec, extra=(*spec.extra, "--mlq-slo-s", f"{slo_s:.3f}"))


def _with_extension(rates: Sequence[float], rows: list[dict], ctx: Context, extend: int) -> Iterator[float]:
    """The sweep's rates, then, while the configuration has met the SLO at every rate run so far (`rows`
    is filled by the caller as it goes), up to `extend` more, each EXTEND_GROWTH x the last. The caller
    stops at the first miss."""
    yield from rates
    last = rates[-1]
    for _ in range(extend):
        if ctx.slo_s is None or len(rows) < len(rates) or any(misses_slo(r["ttft_p99_s"], ctx.slo_s)
                                                               for r in rows):
            return
        last = round(last * EXTEND_GROWTH, 2)
        print(f"[{rows[-1]['config']}] met the SLO at every rate so far: extending the sweep to "
              f"{last:.2f} rps", flush=True)
        yield last


def _launch_value(launch: Sequence[str], flag: str, default: int) -> int:
    for i, tok in enumerate(launch[:-1]):
        if tok == flag:
            return int(launch[i + 1])
    return default


def _predictions(args, records: Sequence[TraceRecord], rows: list[dict], ctx: Context, launch: Sequence[str],
                 slo_s: float) -> list[dict]:
    """The simulator's P50/P99 TTFT for every run, with the profile measured on this system."""
    if ctx.profile is None or ctx.scale is None:
        return []
    out = []
    for r in rows:
        pred = predict(records, r["requests"], ctx.profile, r["config"], r["rate"], n_adapters=args.adapters,
                       ranks=ctx.ranks, scale=ctx.scale, arrivals=args.arrivals,
                       exponent=args.popularity_exponent, base_fraction=args.base_fraction, seed=args.seed,
                       max_prefill_tokens=_launch_value(launch, "--max-batch-prefill-tokens", 4096),
                       slo_s=slo_s)
        if pred is None:
            continue
        meas = r["ttft_p50_s"]
        err = (pred["ttft_p50_s"] - meas) / meas if meas and not math.isnan(meas) else None
        out.append({"config": r["config"], "rate": r["rate"], "sim_policy": pred["policy"],
                    "measured_ttft_p50_s": meas, "predicted_ttft_p50_s": pred["ttft_p50_s"],
                    "measured_ttft_p99_s": r["ttft_p99_s"], "predicted_ttft_p99_s": pred["ttft_p99_s"],
                    "p50_rel_error": err, "predicted_cache_hit_rate": pred["cache_hit_rate"]})
    return out


def _steady(args, records: Sequence[TraceRecord], configs: Sequence[str], rate: float | None, ctx: Context,
            launch: Sequence[str], slo_s: float) -> list[dict]:
    """The simulator at the high load with `--steady-requests` requests (see `predict_steady`)."""
    if ctx.profile is None or ctx.scale is None or not rate or args.steady_requests <= 0:
        return []
    return predict_steady(records, args.steady_requests, ctx.profile, configs, rate, n_adapters=args.adapters,
                          ranks=ctx.ranks, scale=ctx.scale, arrivals=args.arrivals,
                          exponent=args.popularity_exponent, base_fraction=args.base_fraction, seed=args.seed,
                          max_prefill_tokens=_launch_value(launch, "--max-batch-prefill-tokens", 4096),
                          slo_s=slo_s)


def _with_slo(rows: list[dict], slo_s: float) -> list[dict]:
    """Recompute each run's statistics now that the SLO is known (attainment needs it)."""
    out = []
    for r in rows:
        recs = r["_records"]
        out.append({**r, **summarise(recs, slo_s)})
    return out


async def compare(args) -> dict:
    configs = parse_configs(args.configs)
    records = load_records(args)
    prepare_outputs(files=(args.json, args.plot, args.profile_out), folders=(args.log_dir,))
    launch = tuple(shlex.split(args.launch_args if args.launch_args is not None else PRESETS[args.preset]))
    spec = system.SystemSpec(args.model_id, args.adapter_dir, launch)
    ctx = Context(parse_rates(args.rates), slo_s=args.slo_s)
    load_start = machine.loadavg_1m()
    started = time.perf_counter()
    rows: list[dict] = []
    failed: dict[str, str] = {}
    for config in configs:
        try:
            rows += await _config(args, config, spec, records, ctx, first=config == configs[0])
        except (RuntimeError, ConnectionError) as exc:   # a config that cannot start or serve
            failed[config] = str(exc)
            print(f"[{config}] FAILED, left out of the comparison: {exc}", file=sys.stderr, flush=True)
        partial = [{k: v for k, v in r.items() if k not in ("_records", "ttft_sorted")} for r in rows]
        (args.log_dir / "bench-compare-partial.json").write_text(json.dumps(json_safe(partial)) + "\n")
    if not rows:
        raise RuntimeError(f"no configuration could be measured: {failed}")
    base_low = next((r for r in rows if r["config"] == configs[0]), None)
    slo_s = args.slo_s if args.slo_s is not None \
        else slo_from_low_load(base_low["e2e_mean_s"] if base_low else 0.0)
    rows = _with_slo(rows, slo_s)
    summary, high = report.summarise_configs(rows, slo_s)
    preds = await asyncio.to_thread(_predictions, args, records, rows, ctx, launch, slo_s)
    steady = await asyncio.to_thread(_steady, args, records, configs, high.get("high_load_rps"), ctx, launch,
                                     slo_s)
    meta = {"trace": str(args.trace), "workload": args.workload, "preset": args.preset,
            "configs": configs, "rates": ctx.rates, "duration_s": args.duration,
            "adapters": args.adapters, "length_scale": args.length_scale, "seed": args.seed,
            "slo_s": slo_s, "slo_basis": "given" if args.slo_s is not None else
            f"5 x mean request time of {configs[0]} at {ctx.rates[0]} rps", **high,
            "launch_args": list(launch), "failed": failed, "elapsed_s": time.perf_counter() - started,
            "probe": ctx.probe, "probe_fractions": None if args.rates else list(PROBE_FRACTIONS),
            "skipped_rates": ctx.skipped, "full_sweep": bool(args.full_sweep),
            "loadavg_1m_start": load_start, "loadavg_1m_end": machine.loadavg_1m(),
            "loadavg_1m_max": max((v for r in rows for v in (r.get("loadavg_1m_before"),
                                                             r.get("loadavg_1m_after")) if v is not None),
                                  default=None), "cpus": machine.cpu_count()}
    return {"summary": summary, "runs": rows, "predictions": preds, "steady_state": steady, "meta": meta,
            "profile": ctx.profile}


def _document(out: dict) -> dict:
    runs = [{k: v for k, v in r.items() if k not in ("_records", "ttft_sorted")} for r in out["runs"]]
    prof = out["profile"].to_dict() if out["profile"] is not None else None
    return json_safe({"summary": out["summary"], "runs": runs, "predictions": out["predictions"],
                       "steady_state": out["steady_state"], "profile": prof, "meta": out["meta"]})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        out = asyncio.run(compare(args))
    except (ValueError, TraceError, ConnectionError, RuntimeError) as exc:
        print(f"chameleon bench-compare: {exc}", file=sys.stderr)
        return 2
    doc = _document(out)
    print()
    print(report.format_runs(doc["runs"]))
    print()
    print(report.format_counters(doc["runs"]))
    print()
    print(report.format_summary(doc["summary"], out["meta"], doc["meta"]["slo_s"]))
    if out["predictions"]:
        print("\nsimulator (profile measured on this system) vs measurement:")
        print(report.format_predictions(doc["predictions"]))
    if out["steady_state"]:
        print(f"\nsimulator steady state at the high load ({args.steady_requests} requests each, same "
              "profile; a P99 that one burst cannot move):")
        print(report.format_steady(doc["steady_state"]))
    prof_path = Path(args.profile_out or (Path(args.json).with_suffix(".profile.json") if args.json
                                          else "bench-profile.json"))
    if out["profile"] is not None:
        out["profile"].save(prof_path)
        print(f"\nmeasured profile: {prof_path} (chameleon simulate --profile {prof_path})")
    print(f"elapsed {doc['meta']['elapsed_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        from chameleon.tools.bench.plot import plot_compare

        plot_compare(out["runs"], doc["meta"], args.plot)
    return 0
