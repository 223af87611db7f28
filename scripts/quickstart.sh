#!/usr/bin/env bash
# The whole LongAlign recipe in miniature: offline, CPU, a tiny model, a few minutes.
#
#   synthetic data -> pre_tokenize -> sort_and_group -> train (pack + loss weighting)
#   -> Needle test before/after training -> heatmap PNG -> LongBench-Chat predictions
#
# Everything lands in runs/quickstart/ (git-ignored). Re-running reuses the environment and redoes
# the stages. Each stage prints a header named after its script and the summary gives each stage's time.
set -euo pipefail
cd "$(dirname "$0")/.."
t_setup=$SECONDS
source scripts/setup_env.sh
setup_s=$((SECONDS - t_setup))

RUN=runs/quickstart
DATA=$RUN/data
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

stage synthetic longalign/synthetic.py \
  python -m longalign.synthetic --out "$DATA" --num_long 36000 --long_min_words 15 --num_short 4000 --hidden_size 128

stage pre_tokenize pre_tokenize.py \
  python pre_tokenize.py --model "$DATA/tokenizer" --long_file "$DATA/raw/long.jsonl" \
    --short_file "$DATA/raw/sharegpt.jsonl" --datanum all --max_length 1024 --out_dir "$RUN/tokenized"

stage sort_and_group sort_and_group.py \
  python sort_and_group.py --train_file "$RUN/tokenized" --group_size 1 --max_length 1024

stage train train.py \
  python train.py --model_name_or_path "$DATA/tiny-llama" --train_file "$RUN/tokenized" \
    --batch_method pack --pack_loss --per_device_train_batch_size 1 --learning_rate 3e-3 \
    --warmup_steps 0.03 --lr_scheduler_type cosine --adam_beta2 0.95 --num_train_epochs 1 \
    --logging_steps 250 --save_strategy no --output_dir "$RUN/model" --use_cpu true

stage needle Needle_test/pred.py \
  bash Needle_test/quickstart.sh needle "$RUN"

stage heatmap Needle_test/vis.py \
  bash Needle_test/quickstart.sh heatmap "$RUN"

# LongBench-Chat on synthetic cases: predictions always; the judge only when OPENAI_API_KEY is set.
stage longbench_chat LongBench_Chat/eval.py \
  bash -c 'set -e; python -m longalign.synthetic_eval --out "$0/lbc_data" --num_cases 8; rm -rf "$0/lbc"
    model=$0/model; [ -f "$model/config.json" ] || model=$0/data/tiny-llama
    judge=false; [ -n "${OPENAI_API_KEY:-}" ] && judge=true
    python LongBench_Chat/eval.py --model_path "$model" --tokenizer "$0/data/tokenizer" --data_dir "$0/lbc_data" \
      --output_dir "$0/lbc" --max_length 2048 --max_new_tokens 32 --temperature 0 --do_judge $judge' "$RUN"

echo
echo "==================== summary ===================="
printf '%-16s %7ss\n' setup "$setup_s"
printf '%s\n' "${summary[@]}"
printf '%-16s %7ss\n' total "$SECONDS"
