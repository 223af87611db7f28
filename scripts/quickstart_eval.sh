#!/usr/bin/env bash
# The quickstart's evaluation: the paper's table (scripts/eval_all.py, every stage the real benchmark script) for
# SmolLM2-135M-Instruct before and after the quickstart's LongAlign SFT, offline, on cases in each benchmark's
# own format:
#
#   LongBench-Chat  8 LongBench-Chat-shaped cases (tools/demo_data.py: standard-library docstrings, a question
#                   asking for two facts among look-alikes); judge: the rubric judge, NOT GPT-4 (1 + 9 x token F1
#                   against the reference answer, tools/rubric_judge.py)
#   LongBench       synthetic cases in LongBench's jsonl format (tools/synthetic_longbench.py), one per task of
#                   the three groups, through lm-evaluation-harness with LongBench's own metrics
#   MT-Bench        synthetic two-turn questions in FastChat's format (tools/synthetic_mt_bench.py); judge: the
#                   fault server, whose ratings are PLANNED by markers in the questions: the column checks the
#                   plumbing (two turns, prompts, judge, files), not the model
#   ARC, HellaSwag, synthetic cases in the hub datasets' fields (tools/synthetic_general.py: 2 per task, MMLU's
#   TruthfulQA,     subjects anatomy and world_religions), through lm-evaluation-harness's own tasks with the Open
#   MMLU            LLM Leaderboard's shots (25 / 10 / 0 / 5), scored from the model's log-likelihoods
#   Needle          9 cells of 250-1,000 tokens (Needle_test/config-quickstart-prompt.yaml), match scorer: 10 if
#                   the answer has "45 seconds", else 1
#
# Greedy answers are decoded several at a time (--batch_size: the same answers up to float rounding; a CPU decodes
# a batch in about the time of one answer, but reads every padding token of it, so prompts of similar length go
# together: the Needle's 3 prompts of each length, LongBench-Chat's cases sorted by length, 4 at a time).
#
# One local server on 127.0.0.1 (tools/fault_server.py) judges everything: a prompt with a marker gets its
# planned rating, any other the rubric judge's.
#
#   bash scripts/quickstart_eval.sh RUN_DIR   -> RUN_DIR/eval/{base,trained}/results.{json,md}; the table on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}
BASE=${BASE_MODEL:-data/smollm2-135m-instruct}
DATA=$RUN/data
OUT=$RUN/eval

python -m tools.synthetic_longbench --output_dir "$DATA/longbench" --num_cases 1 --context_words 200
python -m tools.synthetic_mt_bench --output_dir "$DATA/mt_bench" --num_questions 8
python -m tools.synthetic_general --output_dir "$DATA/general"

mkdir -p "$OUT"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m tools.fault_server --port "$port" > "$OUT/judge.log" 2>&1 &
judge_pid=$!
trap 'kill "$judge_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do  # wait until the server answers (at most ~10 s)
  grep -q "at http" "$OUT/judge.log" 2>/dev/null && break
  sleep 0.2
done
head -1 "$OUT/judge.log"

# table NAME MODEL: the four stages of one model into $OUT/NAME (greedy; short answers to fit the CPU budget; the
# stages in this process: a new interpreter per script would cost ~4 s of imports each).
table() {
  rm -rf "${OUT:?}/$1"  # resumable by design; start clean so that every quickstart measures its own models
  OPENAI_API_KEY=local python scripts/eval_all.py --model_name_or_path "$2" --output_dir "$OUT/$1" --in_process true \
    --max_length 4096 --judge_base_url "http://127.0.0.1:$port/v1" --judge_model fault-server-not-gpt4 \
    --lbc_data_dir "$DATA/lbc" --lbc_args "--max_new_tokens 48 --temperature 0 --judge_runs 1 --batch_size 4" \
    --longbench_data_dir "$DATA/longbench" --longbench_args "--max_new_tokens_cap 32 --batch_size 8" \
    --mt_bench_dir "$DATA/mt_bench" --mt_bench_args "--max_new_tokens 16" \
    --general_data_dir "$DATA/general" --general_args "--mmlu_subjects anatomy,world_religions" \
    --haystack_dir "$DATA/haystack" --needle_prompt_args "--config Needle_test/config-quickstart-prompt.yaml" \
    --needle_pred_args "--max_new_tokens 24 --batch_size 3" --needle_eval_args "--scorer match --key_phrase '45 seconds'"
}

table base "$BASE"
if [ -f "$RUN/model/config.json" ]; then
  table trained "$RUN/model"
else
  echo "eval: no trained model in $RUN/model (the train stage did not run): trained model skipped"
fi
