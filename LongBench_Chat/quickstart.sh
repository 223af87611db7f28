#!/usr/bin/env bash
# The quickstart's LongBench-Chat stage: SmolLM2-135M-Instruct before and after the quickstart's LongAlign
# SFT answers the same LongBench-Chat-shaped cases (RUN_DIR/data/lbc, written by tools/demo_data.py: a
# document of standard-library docstrings, a question asking for two facts among look-alikes, a reference
# answer), and an offline judge scores every answer 1-10.
#
#   bash LongBench_Chat/quickstart.sh RUN_DIR     -> RUN_DIR/lbc/{base,trained}/scores.json
#
# The judge is NOT GPT-4: it is tools/rubric_judge.py, token F1 of the answer against the reference
# answer mapped to 1 + 9 x F1, served on 127.0.0.1 through the same client, prompt and files as a real
# judge (its arithmetic is in each judge_reply of judgements.jsonl). It is deterministic, so one judgement
# per answer (--judge_runs 1) says what two would.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}
BASE=${BASE_MODEL:-data/smollm2-135m-instruct}
OUT=$RUN/lbc

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m tools.rubric_judge --port "$port" > "$OUT.judge.log" 2>&1 &
judge_pid=$!
trap 'kill "$judge_pid" 2>/dev/null || true' EXIT
# wait until the server answers (at most ~10 s)
for _ in $(seq 50); do
  grep -q "at http" "$OUT.judge.log" 2>/dev/null && break
  sleep 0.2
done
head -1 "$OUT.judge.log"

# lbc_run NAME MODEL: answers (greedy, 64 new tokens) and rubric scores of one model in $OUT/NAME.
lbc_run() {
  rm -rf "${OUT:?}/$1"  # resumable by design; start clean so that every quickstart measures its own models
  OPENAI_API_KEY=local python LongBench_Chat/eval.py --model_name_or_path "$2" --data_dir "$RUN/data/lbc" \
    --output_dir "$OUT/$1" --max_length 4096 --max_new_tokens 64 --temperature 0 \
    --judge_base_url "http://127.0.0.1:$port/v1" --judge_model rubric-f1-not-gpt4 --judge_runs 1
}

lbc_run base "$BASE"
if [ -f "$RUN/model/config.json" ]; then
  lbc_run trained "$RUN/model"
else
  echo "longbench_chat: no trained model in $RUN/model (the train stage did not run): trained model skipped"
fi
