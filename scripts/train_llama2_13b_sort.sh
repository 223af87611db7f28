#!/usr/bin/env bash
# LongAlign-13B-64k: Llama-2-13B-64k, sorted batching (paper Figure 5 "sort": 44.5 h on 8 x A800).
#   8 GPUs x 1 sequence x accumulation 12 = 96 sequences per step
# Data: as scripts/train_llama2_7b_sort.sh (Llama-2 7B and 13B share the tokenizer)
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-13B-64k-base --train_file data/llama/10k \
  --batch_method sort --gradient_accumulation_steps 12 --output_dir output/llama2-13b-64k-sort "$@"
