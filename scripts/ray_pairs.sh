#!/usr/bin/env bash
# Issue 20's live benchmark: 2 Ray Serve replicas, Ray's default routing vs adapter affinity, the same
# requests for both, in alternating pairs (one seed per pair, the order flipped every pair) so that a busy
# machine's drift falls on both routings alike. Prints each run, each pair's ratios, their medians and
# range, and the TTFT percentiles pooled over the pairs (scripts/ray_pairs_summary.py).
#
#   scripts/ray_pairs.sh [OUT_DIR]      (default ./ray-pairs-out)
#
# Environment (defaults: CPU, the SmolLM2 demo model with its 100 adapters, memory-bound pools):
#   ASSETS        `chameleon demo-assets` folder (model/, adapters/)   ~/.cache/chameleon/assets/smollm2-seed0
#   RATE DUR      requests/s (Poisson) and seconds of arrivals per run   2.0 180
#   WARMUP        seconds of other requests (seed + 1000) first, not counted: the caches reach their
#                 steady state, so cold-start loads (the same floor for any routing) do not dilute the
#                 comparison; 0 = measure from cold                          60
#   SEEDS         one pair per seed                                      "1 2 3"
#   REPLICAS      replicas                                               2
#   SERVE_ARGS    more serve-ray flags (GPU: "--gpus-per-rank 0.5")     ""
#   LAUNCH_ARGS   every replica's `chameleon launch` flags
#                 "--shard-args '--threads 1' --memory-budget 1200000000 --max-batch-prefill-tokens 1024"
#   TRACE         trace CSV                                              ../shared/data/traces/azure_llm_2023_conv.csv
#   PORT          Ray Serve's HTTP port                                  8000
#   PYTHON        the Python with chameleon-serve[ray] installed         python
# Each run starts serve-ray, waits for /health, replays, stops it (SIGTERM) and runs `ray stop`.
set -u
OUT=${1:-./ray-pairs-out}
ASSETS=${ASSETS:-$HOME/.cache/chameleon/assets/smollm2-seed0}
RATE=${RATE:-2.0}; DUR=${DUR:-180}; WARMUP=${WARMUP:-60}; SEEDS=${SEEDS:-1 2 3}; REPLICAS=${REPLICAS:-2}; PORT=${PORT:-8000}
SERVE_ARGS=${SERVE_ARGS:-}
LAUNCH_ARGS=${LAUNCH_ARGS:-"--shard-args '--threads 1' --memory-budget 1200000000 --max-batch-prefill-tokens 1024"}
TRACE=${TRACE:-../shared/data/traces/azure_llm_2023_conv.csv}
PYTHON=${PYTHON:-python}
CHAMELEON="$PYTHON -m chameleon"
RAY=$(dirname "$(command -v "$PYTHON")")/ray
mkdir -p "$OUT"
WD=$(mktemp -d /tmp/raypairs-XXXX)  # short: unix socket paths live under it

run_one() {  # routing seed tag
  local routing=$1 seed=$2 tag=$3 pid
  rm -rf "$WD"/*
  # shellcheck disable=SC2086
  $CHAMELEON serve-ray --replicas "$REPLICAS" --model-id "$ASSETS/model" --adapter-dir "$ASSETS/adapters" \
      --port "$PORT" --workdir "$WD" --routing "$routing" $SERVE_ARGS --launch-args "$LAUNCH_ARGS" \
      > "$OUT/serve-$tag-$routing.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do curl -sf "localhost:$PORT/health" > /dev/null 2>&1 && break; sleep 2; done
  sleep 5
  if [ "$WARMUP" != 0 ]; then
    # shellcheck disable=SC2086
    $CHAMELEON bench-ray --url "http://127.0.0.1:$PORT" --workdir "$WD" --trace "$TRACE" --rate "$RATE" \
        --duration "$WARMUP" --adapters 100 --seed $((seed + 1000)) > "$OUT/warmup-$tag-$routing.txt" 2>&1
  fi
  uptime > "$OUT/bench-$tag-$routing.txt"
  # shellcheck disable=SC2086
  $CHAMELEON bench-ray --url "http://127.0.0.1:$PORT" --workdir "$WD" --trace "$TRACE" --rate "$RATE" \
      --duration "$DUR" --adapters 100 --slo-s 5 --seed "$seed" --json "$OUT/$tag-$routing.json" \
      >> "$OUT/bench-$tag-$routing.txt" 2>&1
  uptime >> "$OUT/bench-$tag-$routing.txt"
  kill -TERM "$pid"; wait "$pid"
  "$RAY" stop >> "$OUT/serve-$tag-$routing.log" 2>&1
  sleep 3
}

i=0
for seed in $SEEDS; do
  if [ $((i % 2)) -eq 0 ]; then order="default affinity"; else order="affinity default"; fi
  for routing in $order; do run_one "$routing" "$seed" "s$seed"; done
  i=$((i + 1))
done
rm -rf "$WD"
"$PYTHON" "$(dirname "$0")/ray_pairs_summary.py" "$OUT"
