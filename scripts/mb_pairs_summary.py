"""Summary of scripts/mb_pairs.sh: per round, chameleon/chameleon's TTFT P99 and P50 at the highest rate
as ratios of each other configuration's run in the same round, and (with two rates or more) each
configuration's throughput at the TTFT SLO over that round's rates, as a ratio of fifo/none's; medians
and ranges over the rounds.

usage: mb_pairs_summary.py OUT_DIR REPEATS --rates R1,R2,... --slo-s S CONFIG...
(reads OUT_DIR/<config with - for />-<rate>-<round>.json, bench-compare's --json; CONFIG: the
configurations the rounds ran, chameleon/chameleon among them)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from chameleon.sim.metrics import throughput_at_slo

SUBJECT = "chameleon/chameleon"
BASE = "fifo/none"


def run(out: Path, config: str, rate: str, i: int) -> dict:
    doc = json.loads((out / f"{config.replace('/', '-')}-{rate}-{i}.json").read_text())
    return doc["runs"][0]


def _ratios(stat: str, ratios: list[float]) -> str:
    """stat, the per-round ratios, their median and range."""
    return (f"{stat:<4} {' '.join(f'{r:.2f}' for r in ratios):<36} "
            f"{statistics.median(ratios):>6.2f}x {min(ratios):>5.2f}-{max(ratios):.2f}x")


def main(out: Path, repeats: int, rates: list[str], slo_s: float, configs: list[str]) -> int:
    """rates: as the file names spell them (mb_pairs.sh's RATES)."""
    rounds = range(1, repeats + 1)
    high = max(rates, key=float)
    rows = {c: [run(out, c, high, i) for i in rounds] for c in configs}
    mine = rows[SUBJECT]
    print(f"at {high} rps (SLO {slo_s:g} s)")
    print(f"{SUBJECT + ' vs':<23} {'stat':<4} {'per round':<36} {'median':>7} {'range':>12}")
    for base in (c for c in configs if c != SUBJECT):
        for stat in ("ttft_p99_s", "ttft_p50_s"):
            print(f"{base:<23} " + _ratios(stat[5:8], [m[stat] / b[stat]
                                                       for m, b in zip(mine, rows[base], strict=True)]))
    if len(rates) > 1 and BASE in configs:
        values = [float(r) for r in rates]
        thr = {c: [throughput_at_slo(values, [run(out, c, r, i)["ttft_p99_s"] for r in rates], slo_s)
                   for i in rounds] for c in configs}
        print(f"throughput at the SLO over {', '.join(rates)} rps, x {BASE} in the same round "
              "(+: met the SLO at every rate, so at least this)")
        for c in configs:
            per = thr[c]
            print(f"{c:<23} {' '.join(f'{t.rps:.2f}' + ('' if t.bounded else '+') for t in per):<30} "
                  + (_ratios("thr", [t.rps / b.rps if b.rps > 0 else float("inf")
                                      for t, b in zip(per, thr[BASE], strict=True)]) if c != BASE else ""))
    for c, rs in rows.items():
        print(f"{c:<23} median P99 {statistics.median(r['ttft_p99_s'] for r in rs):.2f} s, "
              f"P50 {statistics.median(r['ttft_p50_s'] for r in rs):.2f} s, "
              f"SLO attainment {statistics.median(r['slo_attainment'] for r in rs):.0%}, "
              f"errors {sum(run(out, c, r, i)['errors'] for r in rates for i in rounds)}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("repeats", type=int)
    p.add_argument("--rates", required=True, help="comma-separated rates the rounds ran")
    p.add_argument("--slo-s", type=float, required=True, help="the TTFT SLO (s) for throughput at the SLO")
    p.add_argument("configs", nargs="+")
    a = p.parse_args()
    sys.exit(main(a.out, a.repeats, a.rates.split(","), a.slo_s, a.configs))
