"""`bench-compare` results -> the per-configuration summary (throughput at the SLO, high-load TTFT,
cache hit rate, ratios against the baseline), text tables and the JSON document.

JSON: {"summary": {CONFIG: {"slo_throughput_rps", "ttft_p99_s_at_high_load", "ttft_p50_s_at_high_load",
"cache_hit_rate", ...}}, "runs": [...], "predictions": [...], "meta": {...}}; the high load is the
lowest swept rate at which the baseline (`fifo/none`) misses the SLO (P99 TTFT > SLO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from chameleon.tools.bench.stats import BASELINE, high_load_rate, ratio, slo_throughput


def summarise_configs(runs: Sequence[dict], slo_s: float, baseline: str = BASELINE) -> tuple[dict, dict]:
    """(summary per config, high-load info). `runs` rows carry config, rate and the run statistics."""
    configs = list(dict.fromkeys(r["config"] for r in runs))
    by = {c: sorted((r for r in runs if r["config"] == c), key=lambda r: r["rate"]) for c in configs}
    if baseline not in by:          # no S-LoRA run: compare against the first configuration
        baseline = configs[0]
    ref = by[baseline]
    high, found = high_load_rate([r["rate"] for r in ref], [r["ttft_p99_s"] for r in ref], slo_s)
    summary: dict[str, dict] = {}
    for c, rs in by.items():
        thr, bounded = slo_throughput([r["rate"] for r in rs], [r["ttft_p99_s"] for r in rs], slo_s)
        at = next((r for r in rs if r["rate"] == high), None)
        summary[c] = {"slo_throughput_rps": thr, "slo_throughput_bounded": bounded,
                      "ttft_p99_s_at_high_load": at["ttft_p99_s"] if at else math.nan,
                      "ttft_p50_s_at_high_load": at["ttft_p50_s"] if at else math.nan,
                      "cache_hit_rate": at.get("cache_hit_rate") if at else None,
                      "errors_at_high_load": at["errors"] if at else None}
    base = summary.get(baseline)
    for s in summary.values():
        for key, src in (("slo_throughput_x_baseline", "slo_throughput_rps"),
                         ("ttft_p99_x_baseline", "ttft_p99_s_at_high_load"),
                         ("ttft_p50_x_baseline", "ttft_p50_s_at_high_load")):
            s[key] = ratio(s[src], base[src] if base else None)
    return summary, {"high_load_rps": high, "baseline_misses_slo": found, "baseline": baseline}


def _s(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1e3:.0f}ms" if v < 1 else f"{v:.2f}s"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def format_runs(runs: Sequence[dict]) -> str:
    head = (f"{'config':<20} {'rps':>5} {'n':>4} {'err':>3} {'P50 TTFT':>8} {'P90 TTFT':>8} {'P99 TTFT':>8} "
            f"{'P50 TBT':>7} {'P99 TBT':>7} {'thr':>5} {'SLO att':>7} {'hit':>4} {'MLQ ref':>7} "
            f"{'load 1m':>9}")
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(f"{r['config']:<20} {r['rate']:>5.2f} {r['requests']:>4} {r['errors']:>3} "
                     f"{_s(r['ttft_p50_s']):>8} {_s(r['ttft_p90_s']):>8} {_s(r['ttft_p99_s']):>8} "
                     f"{_s(r['tbt_p50_s']):>7} {_s(r['tbt_p99_s']):>7} {r['throughput_rps'] or 0:>5.2f} "
                     f"{_pct(r.get('slo_attainment')):>7} {_pct(r.get('cache_hit_rate')):>4} "
                     f"{_count(r.get('scheduler_refreshes_total')):>7} "
                     f"{_load(r.get('loadavg_1m_before'), r.get('loadavg_1m_after')):>9}")
    lines.append("(MLQ ref: queue-layout refreshes of the Chameleon scheduler since its start, at the end of "
                 "the run; 0 = still its one cold-start queue, i.e. FIFO order. load 1m: the machine's "
                 "1-minute load average before->after the run; above the CPU count, other processes "
                 "competed for the CPUs)")
    return "\n".join(lines)


COUNTER_COLUMNS = (("evict", "evictions"), ("loads", "adapter_loads"), ("reload>=", "reloads_min"),
                   ("GB load", "adapter_bytes_loaded"), ("prefetch", "prefetches"),
                   ("quota st", "quota_stops"), ("bypass", "bypasses"), ("squash", "squashes"),
                   ("starved", "starved"), ("backfill", "backfills"))


def format_counters(runs: Sequence[dict]) -> str:
    """The router's memory and scheduler counters over each run (Prometheus deltas, chameleon/tools/bench/
    scrape.py): adapter evictions, loads, reloads (at least loads - adapters used), bytes loaded,
    prefetches, MLQ quota stops, bypasses, squashes, starvation-bound admissions, backfills."""
    head = f"{'config':<20} {'rps':>5} " + " ".join(f"{name:>8}" for name, _ in COUNTER_COLUMNS)
    lines = [head, "-" * len(head)]
    for r in runs:
        vals = []
        for name, key in COUNTER_COLUMNS:
            v = r.get(key)
            vals.append("-" if v is None else (f"{v / 1e9:.2f}" if name == "GB load" else f"{v:.0f}"))
        lines.append(f"{r['config']:<20} {r['rate']:>5.2f} " + " ".join(f"{v:>8}" for v in vals))
    lines.append("(reload>=: adapter loads beyond one per distinct adapter the run used, a lower bound on "
                 "reloads after eviction; '-': the router does not report it, e.g. no MLQ)")
    return "\n".join(lines)


def _count(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _load(before: float | None, after: float | None) -> str:
    def one(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return f"{one(before)}->{one(after)}"


def format_summary(summary: dict, high: dict, slo_s: float) -> str:
    note = "" if high["baseline_misses_slo"] else f" ({high['baseline']} met the SLO at every rate: highest)"
    lines = [f"TTFT SLO {slo_s:.2f} s; high load = {high['high_load_rps']:.2f} rps{note}",
             f"{'config':<20} {'thr@SLO':>8} {'x base':>7} {'P50@high':>9} {'x base':>7} "
             f"{'P99@high':>9} {'x base':>7} {'hit@high':>8}"]
    for c, s in summary.items():
        bound = "" if s["slo_throughput_bounded"] else ("+" if s["slo_throughput_rps"] else "<")
        lines.append(f"{c:<20} {s['slo_throughput_rps']:>7.2f}{bound:1} "
                     f"{_x(s['slo_throughput_x_baseline']):>7} "
                     f"{_s(s['ttft_p50_s_at_high_load']):>9} {_x(s['ttft_p50_x_baseline']):>7} "
                     f"{_s(s['ttft_p99_s_at_high_load']):>9} {_x(s['ttft_p99_x_baseline']):>7} "
                     f"{_pct(s['cache_hit_rate']):>8}")
    lines.append("(+: the SLO crossing was not reached: met the SLO at every rate it ran, so at least this; "
                 "<: missed it at the lowest rate)")
    skipped = high.get("skipped_rates") or {}
    for c, rates in skipped.items():
        lines.append(f"{c}: stopped after its first SLO miss at or above the high load; not run at "
                     f"{', '.join(f'{r:.2f}' for r in rates)} rps")
    if high.get("loadavg_1m_start") is not None:
        lines.append(f"machine load (1-min average): {high['loadavg_1m_start']:.2f} at the start, "
                     f"{high.get('loadavg_1m_end') or 0:.2f} at the end, max "
                     f"{high.get('loadavg_1m_max') or 0:.2f} around the runs ({high.get('cpus', '?')} CPUs)")
    return "\n".join(lines)


def format_predictions(preds: Sequence[dict]) -> str:
    head = f"{'config':<20} {'rps':>5} {'P50 TTFT meas':>13} {'sim':>8} {'err':>6} {'P99 meas':>9} {'sim':>8}"
    lines = [head, "-" * len(head)]
    for p in preds:
        err = p["p50_rel_error"]
        lines.append(f"{p['config']:<20} {p['rate']:>5.2f} {_s(p['measured_ttft_p50_s']):>13} "
                     f"{_s(p['predicted_ttft_p50_s']):>8} {'-' if err is None else f'{err * 100:+.0f}%':>6} "
                     f"{_s(p['measured_ttft_p99_s']):>9} {_s(p['predicted_ttft_p99_s']):>8}")
    return "\n".join(lines)


def format_steady(rows: Sequence[dict]) -> str:
    head = (f"{'config':<20} {'rps':>5} {'n':>5} {'P50 TTFT':>9} {'x base':>7} {'P99 TTFT':>9} {'x base':>7} "
            f"{'hit':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['config']:<20} {r['rate']:>5.2f} {r['requests']:>5} {_s(r['ttft_p50_s']):>9} "
                     f"{_x(r.get('ttft_p50_s_vs_baseline')):>7} {_s(r['ttft_p99_s']):>9} "
                     f"{_x(r.get('ttft_p99_s_vs_baseline')):>7} {_pct(r.get('cache_hit_rate')):>5}")
    return "\n".join(lines)
