"""Summary of scripts/ray_pairs.sh: each run, each pair's affinity/default ratios, their medians and range,
and the TTFT percentiles pooled over the complete pairs.

usage: ray_pairs_summary.py OUT_DIR      (reads OUT_DIR/s<seed>-<routing>.json, bench-ray's --json)
"""

from __future__ import annotations

import json
import re
import statistics as st
import sys
from pathlib import Path

from chameleon.sim.metrics import percentile


def load(out: Path) -> dict[str, dict[str, dict]]:
    runs: dict[str, dict[str, dict]] = {}
    for f in sorted(out.glob("s*-*.json")):
        m = re.fullmatch(r"(s\d+)-(default|affinity)\.json", f.name)
        if m:
            runs.setdefault(m.group(1), {})[m.group(2)] = json.loads(f.read_text())
    return runs


def run_line(tag: str, routing: str, s: dict) -> str:
    per = s.get("per_replica", {}).values()

    def mean(key: str) -> float:
        vals = [b[key] for b in per if b.get(key) is not None]
        return st.mean(vals) if vals else float("nan")

    split = "/".join(f"{b['requests']:.0f}" for b in per)
    ms = {q: s[f"ttft_p{q}_s"] * 1e3 for q in (50, 90, 99)}
    return (f"{tag} {routing:<8} requests {s['requests']} errors {s['errors']}  "
            f"hit {s['cache_hit_rate']:.1%}  loads/req {s['adapter_loads_per_request']:.3f}  "
            f"TTFT P50 {ms[50]:.0f} P90 {ms[90]:.0f} P99 {ms[99]:.0f} ms  {s['throughput_rps']:.2f} req/s  "
            f"split {split}  load {mean('load_s_mean') * 1e3:.0f} ms  "
            f"queue {mean('queue_s_mean') * 1e3:.0f} ms  "
            f"prefill {mean('prefill_s_per_token') * 1e3:.1f} ms/token")


def main(out: Path) -> int:
    runs = load(out)
    ratios: list[dict[str, float]] = []
    pooled: dict[str, list[float]] = {"default": [], "affinity": []}
    for tag, pair in runs.items():
        for routing in ("default", "affinity"):
            if routing in pair:
                print(run_line(tag, routing, pair[routing]["summary"]))
        if len(pair) < 2:
            continue
        d, a = pair["default"]["summary"], pair["affinity"]["summary"]
        r = {"loads fewer": d["adapter_loads_per_request"] / a["adapter_loads_per_request"],
             **{f"P{q}": a[f"ttft_p{q}_s"] / d[f"ttft_p{q}_s"] for q in (50, 90, 99)}}
        ratios.append(r)
        print(f"  {tag}: adapter loads {r['loads fewer']:.2f}x fewer; TTFT affinity/default "
              + ", ".join(f"P{q} {r[f'P{q}']:.2f}" for q in (50, 90, 99)))
        for routing in pooled:
            pooled[routing] += [x["ttft_s"] for x in pair[routing]["requests"] if x["ttft_s"] is not None]
    for key in ("loads fewer", "P50", "P90", "P99"):
        vals = [r[key] for r in ratios]
        if vals:
            print(f"median {key}: {st.median(vals):.2f} "
                  f"(range {min(vals):.2f}-{max(vals):.2f}, {len(vals)} pairs)")
    for routing, vals in pooled.items():
        if vals:
            print(f"pooled {routing}: {len(vals)} requests, TTFT P50 {percentile(vals, 50) * 1e3:.0f} "
                  f"P90 {percentile(vals, 90) * 1e3:.0f} P99 {percentile(vals, 99) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "ray-pairs-out")))
