#!/usr/bin/env bash
# The whole LongAlign recipe in miniature on a real pretrained model: offline (PyPI only), CPU, ~8 minutes.
#
#   SmolLM2-135M-Instruct from PyPI -> long chats over standard-library docstrings -> pre_tokenize
#   -> sort_and_group -> train (pack + loss weighting) -> the paper's evaluation table (LongBench-Chat,
#   LongBench S-Doc/M-Doc/Summ, MT-Bench, ARC, HellaSwag, TruthfulQA, MMLU, Needle test; offline stand-ins),
#   the model before vs after training
#
# The model lands in data/ (reused by later runs and by the tests); everything else in runs/quickstart/
# (git-ignored). Re-running reuses the environment and the model and redoes the stages. Each stage prints a
# header named after its script; the summary gives each stage's time and the before/after table.
set -euo pipefail
cd "$(dirname "$0")/.."
t_setup=$SECONDS
source scripts/setup_env.sh
setup_s=$((SECONDS - t_setup))

RUN=runs/quickstart
DATA=$RUN/data
MODEL=data/smollm2-135m-instruct
mkdir -p "$RUN"
summary=()

# stage NAME SCRIPT CMD...: run CMD if SCRIPT exists, else say plainly that the stage is not built.
stage() {
  local name=$1 script=$2; shift 2
  echo
  echo "==================== $name ===================="
  if [ ! -f "$script" ]; then
    echo "[$name] not built yet ($script does not exist): skipped"
    summary+=("$(printf '%-16s %8s' "$name" "not built")")
    return 0
  fi
  local t0=$SECONDS
  "$@"
  summary+=("$(printf '%-16s %7ss' "$name" "$((SECONDS - t0))")")
}

stage demo_model scripts/get_demo_model.py \
  python scripts/get_demo_model.py --output_dir "$MODEL"

# 16 long chats (50-400 words of docstrings, 3-10 look-alike facts each, a question about one of them) and
# 8 short ones: 8,112 tokens, 9 packs of <= 1,024, one optimizer step each. The training's time is its tokens
# (~70 tokens/s on 2 cores), so the quickstart trains on few, short chats with a higher learning rate.
# 8 LongBench-Chat-shaped cases of 250-500 words for the evaluation.
stage data tools/demo_data.py \
  python -m tools.demo_data --output_dir "$DATA" --num_long 16 --long_min_words 50 --num_short 8 --lbc_min_words 250

stage pre_tokenize pre_tokenize.py \
  python pre_tokenize.py --model_name_or_path "$MODEL" --template chat_template --long_file "$DATA/raw/long.jsonl" \
    --short_file "$DATA/raw/sharegpt.jsonl" --datanum all --max_length 1024 --output_dir "$RUN/tokenized"

stage sort_and_group sort_and_group.py \
  python sort_and_group.py --train_dir "$RUN/tokenized" --group_size 1 --max_length 1024

# One pack per step, one epoch; the paper's Adam beta2 and cosine schedule, a warmup of 10 % of the steps.
stage train train.py \
  python train.py --model_name_or_path "$MODEL" --train_dir "$RUN/tokenized" \
    --batch_method pack --pack_loss --per_device_train_batch_size 1 --learning_rate 2e-4 \
    --warmup_steps 0.1 --lr_scheduler_type cosine --adam_beta2 0.95 --num_train_epochs 1 \
    --logging_steps 5 --save_strategy no --output_dir "$RUN/model" --use_cpu true

# The paper's evaluation table for the model before and after training (scripts/quickstart_eval.sh says what
# stands in for GPT-4 and the benchmarks' data offline), then the Needle heatmaps.
stage eval scripts/eval_all.py \
  bash scripts/quickstart_eval.sh "$RUN"

# heatmaps: RUN_DIR/needle_{base,trained}.png from each model's Needle scores (the two side by side: each is
# mostly the start of matplotlib, one per core)
heatmaps() {
  local name  # stage() prints its own $name in the summary: this loop must not overwrite it
  local pids=()
  for name in base trained; do
    local f=$RUN/eval/$name/needle/scores.jsonl
    if [ -f "$f" ]; then
      python Needle_test/vis.py --scores_file "$f" --output_file "$RUN/needle_$name.png" \
        --title "Needle test, SmolLM2-135M-Instruct ($name)" &
      pids+=($!)
    fi
  done
  local pid
  for pid in "${pids[@]}"; do wait "$pid"; done  # each one's failure stops the quickstart (set -e)
}
stage heatmap Needle_test/vis.py heatmaps

echo
echo "==================== summary ===================="
printf '%-16s %7ss\n' setup "$setup_s"
printf '%s\n' "${summary[@]}"
printf '%-16s %7ss\n' total "$SECONDS"
echo
# Before / after, side by side, from the files the stages wrote.
dirs=()
for name in base trained; do [ -f "$RUN/eval/$name/results.json" ] && dirs+=("$RUN/eval/$name"); done
if [ ${#dirs[@]} -gt 0 ]; then
  python scripts/eval_all.py --compare "${dirs[@]}" | sed '/^The paper/,$d'
fi
cat <<'EOF'
base = SmolLM2-135M-Instruct as released; trained = the same model after the train stage (runs/quickstart/model).
Mean rating 1-10 (LongBench-Chat, MT-Bench, Needle); LongBench's metrics 0-100 (S-Doc QA, M-Doc QA, Summ);
accuracy 0-100 (ARC, HellaSwag, MMLU; TruthfulQA: mc2).
Offline stand-ins, not the paper's judges or data (scripts/quickstart_eval.sh): LongBench-Chat = 8 shaped cases,
rubric judge 1 + 9 x F1, NOT GPT-4; LongBench = 1 synthetic case per task; MT-Bench = 8 synthetic questions
rated by PLANNED scores (checks the plumbing, not the model); ARC/HellaSwag/TruthfulQA/MMLU = 2 synthetic cases
per task (MMLU: 2 subjects), the leaderboard's shots; Needle = 9 cells of 250-1,000 tokens, 10 if the answer has
"45 seconds", else 1. Each model's results.md is in runs/quickstart/eval/.
EOF
