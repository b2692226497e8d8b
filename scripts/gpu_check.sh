#!/usr/bin/env bash
# The prepared GPU check (issue 18): one command, under 8 minutes on one H100, no network.
#
#   scripts/gpu_check.sh [--dry-run] [OUT_DIR]        (make gpu-check [GPU_CHECK_ARGS=--dry-run])
#
# Stages, each under its own timeout inside one overall budget (GPU_CHECK_BUDGET_S, default 450 s), so a
# hang cannot eat the device time; a stage that fails or times out is recorded and the next one runs:
#   env      versions of python, torch, CUDA, the GPU, triton, transformers, peft, grpcio, protobuf
#   wheels   the generated stubs need grpcio >= 1.85.1 and protobuf >= 7.35.1: when the machine's are
#            older, they are installed (no index) from the carried folder .gpu-wheels/ into WORK/site
#   assets   `chameleon demo-assets --random-llama 7b` (random weights, 40 adapters ranks 8..128), built
#            in the background while the tests run (CPU work)
#   tests    pytest -m gpu tests/gpu tests/shard_kernels tests/shard_model/test_elastic_pool.py (servicer on
#            CUDA, PEFT agreement fp32/bf16, the elastic pool's CUDA resize,
#            TP=2 on one GPU, the Triton kernels against their references) -> gpu_tests.xml
#   kernels  python -m shard.kernels.bench (Llama-7B-shaped kernel timings and errors) -> kernels.json
#   bench    chameleon bench-shard on CUDA, bf16, batch 32: bandwidth floor, 32 adapters vs base-only,
#            vs transformers+PEFT -> bench.json
#   co-tenant  chameleon soak --co-tenant --device cuda (1 min, tiny model): the headroom loop with CUDA
#            memory -> co_tenant.json
# Results (at most 8 files, for the device tool): OUT_DIR/{env.json, gpu_tests.xml, kernels.json,
# bench.json, co_tenant.json, co_tenant_launch.log, summary.json, gpu_check.log}; summary.json has every stage's exit code and seconds, the
# test counts and the issue's targets. OUT_DIR: the argument, else $OUT, else ./gpu-check-out.
#
# --dry-run: the same stages on CPU (CUDA hidden, TRITON_INTERPRET=1) with the tiny random Llama, the
# CPU counterparts of the GPU tests (Triton backend and kernels under the interpreter) and a collect-only
# pass over the gpu-marked tests, so the first GPU run is not the script's first run.
#
# On the lent GPU machine (the `run` tool), carry the wheels folder: here, once,
#   echo /.gpu-wheels/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu-wheels \
#     grpcio==1.85.4 protobuf==7.36.2
# then run with carry [".gpu-wheels"] and command `bash scripts/gpu_check.sh` (timeout_s 540).
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT_DIR=${1:-${OUT:-$ROOT/gpu-check-out}}
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/chameleon-gpu-check}
mkdir -p "$WORK"
PY=${PYTHON:-python3}
LOG="$OUT_DIR/gpu_check.log"
STAGES="$WORK/stages.tsv"
: >"$LOG"
: >"$STAGES"
BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEADLINE=$(($(date +%s) + BUDGET))

export PYTHONPATH="$ROOT:$ROOT/proto${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ((DRY)); then
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
    DEVICE=cpu
else
    unset TRITON_INTERPRET
    DEVICE=cuda
fi

say() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# stage NAME LIMIT_S STDOUT CMD...: runs CMD (an executable) under min(LIMIT_S, what the budget has left),
# its stdout to the file STDOUT ("-": the log), stderr to the log; records rc and seconds
stage() {
    local name=$1 limit=$2 out=$3
    shift 3
    [[ "$out" == - ]] && out=$LOG
    local left=$((DEADLINE - $(date +%s)))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        say "$name: skipped, the budget is spent"
        printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 0 >>"$STAGES"
        return 0
    fi
    say "$name: start (limit ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    if [[ "$out" == "$LOG" ]]; then
        timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    else
        timeout -k 10 "$limit" "$@" >"$out" 2>>"$LOG"
    fi
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$STAGES"
    say "$name: exit $rc after $(($(date +%s) - t0))s"
    return 0
}

stubs_import() { "$PY" -c "import chameleon_pb.generate_pb2_grpc, chameleon_pb.chameleon_pb2_grpc" 2>/dev/null; }

install_wheels() {  # rc 0: the stubs import (as found, or after installing the carried wheels)
    if stubs_import; then say "wheels: grpcio/protobuf already new enough"; return 0; fi
    if [[ ! -d "$ROOT/.gpu-wheels" ]]; then say "wheels: stubs do not import, no .gpu-wheels/ carried"; return 1; fi
    timeout -k 10 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$ROOT"/.gpu-wheels/*.whl >>"$LOG" 2>&1 || return 1
    PYTHONPATH="$WORK/site:$PYTHONPATH" stubs_import
}

if ((DRY)); then
    PRESET=tiny
    ASSET_ARGS=(--random-llama tiny --num-adapters 10)
    TEST_CMD=("$PY" -m pytest -q -p no:cacheprovider -m "not gpu" -o timeout=120 --junitxml "$OUT_DIR/gpu_tests.xml"
              tests/shard_model/test_triton_backend.py tests/shard_model/test_triton_backend_graphs.py
              tests/shard_model/test_triton_backend_dist.py tests/shard_model/test_triton_backend_compile.py
              tests/shard_kernels)
    KERNEL_ARGS=(--device cpu --dtype float32 --small --iters 2)
    BENCH_ARGS=(--dtype float32 --requests 4 --floor-batch 4 --prompt-tokens 8 --new-tokens 3
                --memory-budget 2147483648 --threads 2 --kernel-backend triton --adapter-dtype model)
else
    PRESET=7b
    ASSET_ARGS=(--random-llama 7b)
    TEST_CMD=("$PY" -m pytest -q -p no:cacheprovider -m gpu -o timeout=150 --junitxml "$OUT_DIR/gpu_tests.xml"
              tests/gpu tests/shard_kernels tests/shard_model/test_elastic_pool.py)
    KERNEL_ARGS=(--device cuda --dtype bfloat16)
    BENCH_ARGS=(--dtype bfloat16 --requests 32 --floor-batch 32 --prompt-tokens 64 --new-tokens 32)
fi
ASSETS="$WORK/assets-$PRESET"

say "mode: $([[ $DRY == 1 ]] && echo dry-run on CPU || echo GPU), results in $OUT_DIR, budget ${BUDGET}s"
stage env 60 - "$PY" "$ROOT/scripts/gpu_check_env.py" "$OUT_DIR/env.json"
W0=$(date +%s)
install_wheels
printf '%s\t%s\t%s\t%s\n' wheels "$?" "$(($(date +%s) - W0))" 120 >>"$STAGES"
[[ -d "$WORK/site" ]] && export PYTHONPATH="$WORK/site:$PYTHONPATH"

# the assets (CPU-bound) build while the tests use the GPU
say "assets: building $ASSETS in the background"
ASSET_T0=$(date +%s)
timeout -k 10 $((DEADLINE - ASSET_T0)) "$PY" -m chameleon demo-assets "${ASSET_ARGS[@]}" --no-progress "$ASSETS" \
    >"$WORK/assets.log" 2>&1 &
ASSET_PID=$!

if ((DRY)); then
    stage collect-gpu-tests 120 - "$PY" -m pytest -q -p no:cacheprovider --collect-only -m gpu tests/gpu tests/shard_kernels
fi
stage tests 240 - "${TEST_CMD[@]}"
stage kernels 60 - "$PY" -m shard.kernels.bench "${KERNEL_ARGS[@]}" --json "$OUT_DIR/kernels.json"

wait "$ASSET_PID"
ASSET_RC=$?
cat "$WORK/assets.log" >>"$LOG"
printf '%s\t%s\t%s\t%s\n' assets "$ASSET_RC" "$(($(date +%s) - ASSET_T0))" "$BUDGET" >>"$STAGES"
say "assets: exit $ASSET_RC after $(($(date +%s) - ASSET_T0))s"

if ((ASSET_RC == 0)); then
    stage bench 300 "$OUT_DIR/bench.json" "$PY" -m chameleon bench-shard --model-dir "$ASSETS/model" \
        --adapter-dir "$ASSETS/adapters" --device "$DEVICE" "${BENCH_ARGS[@]}" --json
else
    printf '%s\t%s\t%s\t%s\n' bench skipped 0 0 >>"$STAGES"
fi

# the headroom scenario with CUDA memory (issue 19): a co-tenant process takes device memory beside a tiny
# shard under load; the shard's elastic pool gives it back and regrows (the dry run does it on CPU)
TINY="$WORK/assets-cotenant"
if ((DRY)); then CT_DEVICE=cpu; else CT_DEVICE=cuda; fi
stage co-tenant-assets 60 - "$PY" -m chameleon demo-assets --tiny --no-progress "$TINY"
stage co-tenant 150 - "$PY" -m chameleon soak --co-tenant --device "$CT_DEVICE" \
    --minutes 1 --model-id "$TINY/model" --adapter-dir "$TINY/adapters" --json "$OUT_DIR/co_tenant.json" \
    --log "$OUT_DIR/co_tenant_launch.log"

"$PY" "$ROOT/scripts/gpu_check_summary.py" "$OUT_DIR" "$STAGES" $([[ $DRY == 1 ]] && echo --dry-run) | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
