#!/usr/bin/env bash
# LongAlign-7B-64k: Llama-2-7B-64k, sorted batching (paper Figure 5 "sort": 23.3 h on 8 x A800).
#   8 GPUs x 1 sequence x accumulation 12 = 96 sequences per step
# Data: python pre_tokenize.py --model llama --datanum 10k
#       python sort_and_group.py --train_file data/llama/10k --group_size 8 --max_length 65536
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-7B-64k-base --train_file data/llama/10k \
  --batch_method sort --gradient_accumulation_steps 12 --output_dir output/llama2-7b-64k-sort "$@"
