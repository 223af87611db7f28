#!/usr/bin/env bash
# Baseline: ChatGLM3-6B-64k, naive batching (paper Figure 5 "naive": 45.4 h on 8 x A800).
#   8 GPUs x 1 sequence x accumulation 12 = 96 sequences per step, in shuffled order (--batch_method naive
#   is the default); a step waits for the longest of its 8 sequences.
# Data: python pre_tokenize.py --model chatglm --datanum 10k   (no plan needed)
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-6B-64k-base --train_file data/chatglm/10k \
  --gradient_accumulation_steps 12 --output_dir output/chatglm3-6b-64k-naive "$@"
