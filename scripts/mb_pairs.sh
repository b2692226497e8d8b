#!/usr/bin/env bash
# Issue 17's live memory-bound comparison in alternating runs: fifo/none, chameleon/chameleon and
# fifo/chameleon, one 45 s run each at each rate, repeated in rounds; a machine whose speed drifts
# between runs (this 2-core VM's decode step moved from 23 to 320 ms across sessions) then falls on
# every configuration alike. Prints each run and, per round, chameleon/chameleon's P99/P50 TTFT at the
# highest rate as a ratio of the other two, and with two rates or more each configuration's throughput
# at the SLO over the round's rates against fifo/none's; medians and ranges (scripts/mb_pairs_summary.py).
#
#   scripts/mb_pairs.sh [OUT_DIR]      (default ./mb-pairs-out)
#
# Environment:
#   RATES     requests/s, space-separated (the preset's high load on the VM: 5)  5
#   SLO       TTFT SLO in seconds (bench-compare's --slo-s; throughput at it)    4.13
#   REPEATS   rounds of the three configurations                                   4
#   DUR       seconds of arrivals per run                                           45
#   PYTHON    interpreter with chameleon installed                                 .venv/bin/python
#   TRACE     trace CSV                         ../shared/data/traces/azure_llm_2023_conv.csv
set -euo pipefail
OUT=${1:-mb-pairs-out}
RATES=${RATES:-${RATE:-5}}; SLO=${SLO:-4.13}; REPEATS=${REPEATS:-4}; DUR=${DUR:-45}
PYTHON=${PYTHON:-.venv/bin/python}
TRACE=${TRACE:-../shared/data/traces/azure_llm_2023_conv.csv}
CONFIGS="fifo/none chameleon/chameleon fifo/chameleon"
mkdir -p "$OUT"
for i in $(seq 1 "$REPEATS"); do
  for rate in $RATES; do
    for c in $CONFIGS; do
      f="$OUT/${c//\//-}-$rate-$i"
      "$PYTHON" -m chameleon bench-compare --preset memory-bound --trace "$TRACE" --adapters 100 \
        --configs "$c" --rates "$rate" --duration "$DUR" --warmup 5 --slo-s "$SLO" \
        --json "$f.json" > "$f.txt" 2>&1
      grep "^$c  *$(printf '%.2f' "$rate")" "$f.txt" | head -1 | sed "s/^/round $i: /"
    done
  done
done
"$PYTHON" "$(dirname "$0")/mb_pairs_summary.py" "$OUT" "$REPEATS" --rates "${RATES// /,}" --slo-s "$SLO" $CONFIGS
