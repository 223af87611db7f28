#!/usr/bin/env bash
# The GPU proof of issue 22 in one command, on a machine with one CUDA GPU (an H100 or H200): the smoke run of
# bench/bench_gpu.py, then its full run. Results under $OUT (default runs/gpu), five files:
#   env.txt     nvidia-smi and the Python packages that matter      smoke.json, smoke.log   the smoke run
#   full.json   every figure of the full run (rewritten after each stage, so a killed run keeps what it measured)
#   full.log    its progress lines and the table
#
# Run as, from the repository root:
#     bash bench/gpu_run.sh                      # smoke (<= 2 min; ~30 s expected), then the full run (<= 6 min)
#     bash bench/gpu_run.sh full --stages train_64k,loss_memory_64k --time_budget 180    # rerun what failed only
#     bash bench/gpu_run.sh smoke                # the smoke run alone
# On this workplace's lent GPU, the device tool's `run` with command `bash bench/gpu_run.sh` and timeout_s 540.
#
# Device time (15 minutes in all, every try counted): a machine's start ~1-2 min + smoke <= 2 + full <= 6 = 10 min
# at most, which leaves one rerun of the stages that failed (the second line above, ~3-4 min), issued at once: the
# machine stays warm 30 s after a call, and a new start costs 1-2 min more. Each stage inside has
# its own time box, and the full run's stages share --time_budget 300 s (bench_gpu.py); `timeout` below is the
# outer guard.
#
# Software. The script runs on the GPU image as it is: Python 3.12, torch 2.11 + CUDA 13, transformers 5.17 with
# huggingface_hub 1.33, numpy, tqdm, pyyaml, accelerate, safetensors, tokenizers: all that bench_gpu.py imports
# (no deepspeed, datasets or sentencepiece). Its docstring lists the APIs checked in torch 2.11 / transformers 5.17.
# Nothing has to travel as wheels. flash-attn is not in the image and has no wheel on PyPI (a source build takes
# longer than the lease): its rows are absent, torch's varlen_attn and per-sequence SDPA are measured.
# Optional, to measure under the pinned transformers 5.24 instead (it accepts the image's huggingface_hub 1.33 and
# tokenizers 0.23; checked here), build its one wheel on the CPU machine, in the repository root:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0
# and carry `.whl` with the call: this script installs whatever .whl/ holds into /tmp/site and puts it first.

set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
shift || true
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# fewer fragmentation OOMs at 64k, for ours and stock transformers alike (recorded in the JSON's env stage)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|huggingface|tokenizers|flash|accelerate|numpy) "
} > "$OUT/env.txt" 2>&1

if [[ $MODE == all || $MODE == smoke ]]; then
    echo "== smoke run (tiny shapes, every stage; <= 2 min)"
    timeout --kill-after=10 120 "$PY" bench/bench_gpu.py --smoke --out "$OUT/smoke.json" 2>&1 | tee "$OUT/smoke.log"
    rc=$?
    if [[ $rc != 0 ]]; then
        echo "== the smoke run failed (exit $rc): no full run; see $OUT/smoke.log"
        exit "$rc"
    fi
fi
if [[ $MODE == all || $MODE == full ]]; then
    echo "== full run (<= 6 min)"
    timeout --kill-after=10 360 "$PY" bench/bench_gpu.py --out "$OUT/full.json" "$@" 2>&1 | tee "$OUT/full.log"
    rc=$?
    [[ $rc == 0 ]] || echo "== the full run ended with exit $rc (124: timeout); $OUT/full.json holds the stages it finished"
    exit "$rc"
fi
