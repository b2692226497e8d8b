#!/usr/bin/env bash
# Issue 17's live memory-bound comparison in alternating runs: fifo/none, chameleon/chameleon and
# fifo/chameleon, one 45 s run each at one rate, repeated; a machine whose speed drifts between runs
# (this 2-core VM's decode step moved from 23 to 320 ms across sessions) then falls on every
# configuration alike. Prints each run and, per repeat, chameleon/chameleon's P99/P50 TTFT as a ratio of
# the other two, with medians and ranges (scripts/mb_pairs_summary.py).
#
#   scripts/mb_pairs.sh [OUT_DIR]      (default ./mb-pairs-out)
#
# Environment:
#   RATE      requests/s (the memory-bound preset's high load on the VM: 5)       5
#   SLO       TTFT SLO in seconds (reported only; bench-compare's --slo-s)        4.13
#   REPEATS   rounds of the three configurations                                   4
#   DUR       seconds of arrivals per run                                           45
#   PYTHON    interpreter with chameleon installed                                 .venv/bin/python
#   TRACE     trace CSV                         ../shared/data/traces/azure_llm_2023_conv.csv
set -euo pipefail
OUT=${1:-mb-pairs-out}
RATE=${RATE:-5}; SLO=${SLO:-4.13}; REPEATS=${REPEATS:-4}; DUR=${DUR:-45}
PYTHON=${PYTHON:-.venv/bin/python}
TRACE=${TRACE:-../shared/data/traces/azure_llm_2023_conv.csv}
CONFIGS="fifo/none chameleon/chameleon fifo/chameleon"
mkdir -p "$OUT"
for i in $(seq 1 "$REPEATS"); do
  for c in $CONFIGS; do
    n=${c//\//-}
    "$PYTHON" -m chameleon bench-compare --preset memory-bound --trace "$TRACE" --adapters 100 \
      --configs "$c" --rates "$RATE" --duration "$DUR" --warmup 5 --slo-s "$SLO" \
      --json "$OUT/$n-$i.json" > "$OUT/$n-$i.txt" 2>&1
    grep "^$c  *$RATE" "$OUT/$n-$i.txt" | head -1 | sed "s/^/round $i: /"
  done
done
"$PYTHON" "$(dirname "$0")/mb_pairs_summary.py" "$OUT" "$REPEATS" $CONFIGS
