"""Summary of scripts/mb_pairs.sh: per round, chameleon/chameleon's TTFT P99 and P50 as ratios of each
other configuration's run in the same round; medians and ranges over the rounds.

usage: mb_pairs_summary.py OUT_DIR REPEATS CONFIG...   (reads OUT_DIR/<config with - for />-<round>.json,
bench-compare's --json; CONFIG: the configurations the rounds ran, chameleon/chameleon among them)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SUBJECT = "chameleon/chameleon"


def run(out: Path, config: str, i: int) -> dict:
    doc = json.loads((out / f"{config.replace('/', '-')}-{i}.json").read_text())
    return doc["runs"][0]


def main(out: Path, repeats: int, configs: list[str]) -> int:
    rows = {c: [run(out, c, i) for i in range(1, repeats + 1)] for c in configs}
    mine = rows[SUBJECT]
    print(f"{SUBJECT + ' vs':<23} {'stat':<4} {'per round':<36} {'median':>7} {'range':>12}")
    for base in (c for c in configs if c != SUBJECT):
        for stat in ("ttft_p99_s", "ttft_p50_s"):
            ratios = [m[stat] / b[stat] for m, b in zip(mine, rows[base], strict=True)]
            print(f"{base:<23} {stat[5:8]:<4} {' '.join(f'{r:.2f}' for r in ratios):<36} "
                  f"{statistics.median(ratios):>6.2f}x {min(ratios):>5.2f}-{max(ratios):.2f}x")
    for c, rs in rows.items():
        print(f"{c:<23} median P99 {statistics.median(r['ttft_p99_s'] for r in rs):.2f} s, "
              f"P50 {statistics.median(r['ttft_p50_s'] for r in rs):.2f} s, "
              f"SLO attainment {statistics.median(r['slo_attainment'] for r in rs):.0%}, "
              f"errors {sum(r['errors'] for r in rs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
