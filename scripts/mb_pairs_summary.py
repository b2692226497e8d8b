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

from chameleon.sim.metrics import SloThroughput, throughput_at_slo

SUBJECT = "chameleon/chameleon"
BASE = "fifo/none"


def run(out: Path, config: str, rate: str, i: int) -> dict:
    doc = json.loads((out / f"{config.replace('/', '-')}-{rate}-{i}.json").read_text())
    return doc["runs"][0]


def _ratios(stat: str, ratios: list[float | None]) -> str:
    """stat, the per-round ratios ('-' where a round has none), the median and range of the others."""
    known = [r for r in ratios if r is not None]
    spread = (f"{statistics.median(known):>6.2f}x {min(known):>5.2f}-{max(known):.2f}x" if known
              else f"{'n/a':>7} {'':>12}")
    return f"{stat:<4} {' '.join('-' if r is None else f'{r:.2f}' for r in ratios):<36} " + spread


def _thr_text(t: SloThroughput, lowest: float) -> str:
    """2.50 (crossed the SLO there), 6.00+ (met it at every rate), <3 (missed it at the lowest rate)."""
    if t.rps == 0 and not t.bounded:
        return f"<{lowest:g}"
    return f"{t.rps:.2f}" + ("" if t.bounded else "+")


def _thr_ratio(t: SloThroughput, base: SloThroughput) -> float | None:
    """None where the baseline missed the SLO at the lowest rate: its throughput is only 'below that'."""
    return None if base.rps <= 0 else t.rps / base.rps


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
              "(+: met the SLO at every rate, so at least this; <: missed it at the lowest rate, so no "
              "ratio that round)")
        for c in configs:
            per = thr[c]
            print(f"{c:<23} {' '.join(_thr_text(t, min(values)) for t in per):<30} "
                  + (_ratios("thr", [_thr_ratio(t, b) for t, b in zip(per, thr[BASE], strict=True)])
                     if c != BASE else ""))
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
