#!/usr/bin/env bash
# Baseline: Llama-2-13B-64k, naive batching (paper Figure 5 "naive": 117.2 h on 8 x A800).
#   8 GPUs x 1 sequence x accumulation 12 = 96 sequences per step, shuffled
# Data: python pre_tokenize.py --model llama --datanum 10k   (no plan needed)
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-13B-64k-base --train_file data/llama/10k \
  --gradient_accumulation_steps 12 --output_dir output/llama2-13b-64k-naive "$@"
