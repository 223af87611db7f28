#!/usr/bin/env bash
# The whole LongAlign recipe in miniature on a real pretrained model: offline (PyPI only), CPU, ~15 minutes.
#
#   SmolLM2-135M-Instruct from PyPI -> long chats over standard-library docstrings -> pre_tokenize
#   -> sort_and_group -> train (pack + loss weighting) -> Needle test and LongBench-Chat-shaped cases,
#   the model before vs after training, side by side
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

# 80 long chats (100-800 words of docstrings, 3-10 look-alike facts each, a question about one of them) and
# 40 short ones: 58,570 tokens (chats of 210-1,241), 30 packs of <= 2,048, one optimizer step each.
stage data tools/demo_data.py \
  python -m tools.demo_data --output_dir "$DATA" --num_long 80 --long_min_words 100 --num_short 40

stage pre_tokenize pre_tokenize.py \
  python pre_tokenize.py --model_name_or_path "$MODEL" --template chat_template --long_file "$DATA/raw/long.jsonl" \
    --short_file "$DATA/raw/sharegpt.jsonl" --datanum all --max_length 2048 --output_dir "$RUN/tokenized"

stage sort_and_group sort_and_group.py \
  python sort_and_group.py --train_dir "$RUN/tokenized" --group_size 1 --max_length 2048

# One pack per step, one epoch; the paper's Adam beta2 and cosine schedule, a warmup of 10 % of the steps.
stage train train.py \
  python train.py --model_name_or_path "$MODEL" --train_dir "$RUN/tokenized" \
    --batch_method pack --pack_loss --per_device_train_batch_size 1 --learning_rate 1e-4 \
    --warmup_steps 0.1 --lr_scheduler_type cosine --adam_beta2 0.95 --num_train_epochs 1 \
    --logging_steps 5 --save_strategy no --output_dir "$RUN/model" --use_cpu true

stage needle Needle_test/pred.py \
  bash Needle_test/quickstart.sh needle "$RUN"

stage heatmap Needle_test/vis.py \
  bash Needle_test/quickstart.sh heatmap "$RUN"

stage longbench_chat LongBench_Chat/eval.py \
  bash LongBench_Chat/quickstart.sh "$RUN"

echo
echo "==================== summary ===================="
printf '%-16s %7ss\n' setup "$setup_s"
printf '%s\n' "${summary[@]}"
printf '%-16s %7ss\n' total "$SECONDS"
echo
# Before / after, side by side, from the files the stages wrote.
python - "$RUN" <<'EOF'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])


def mean(path):
    return json.loads(path.read_text())["mean"] if path.is_file() else None


def cell(x):
    return "n/a" if x is None else f"{x:.2f}"


rows = [("Needle test, 20 cells of 500-2,000 tokens (10 if the answer has \"45 seconds\", else 1)",
         run / "needle/{}/summary.json"),
        ("LongBench-Chat-shaped, 8 cases (judge NOT GPT-4: 1 + 9 x F1 vs the reference's answering words)",
         run / "lbc/{}/scores.json")]
print(f"{'mean score, 1-10':88s} {'before':>7s} {'after':>7s}")
for name, path in rows:
    before, after = mean(Path(str(path).format("base"))), mean(Path(str(path).format("trained")))
    print(f"{name:88s} {cell(before):>7s} {cell(after):>7s}")
print("before = SmolLM2-135M-Instruct as released; after = the same model after the train stage "
      f"({run / 'model'})")
EOF
