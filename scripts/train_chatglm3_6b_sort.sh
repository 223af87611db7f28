#!/usr/bin/env bash
# ChatGLM3-6B-64k, sorted batching (paper Figure 5 "sort": 19.1 h on 8 x A800).
#   8 GPUs x 1 sequence x accumulation 12 = 96 sequences per step; the 8 of a micro-step have similar lengths
# Data: as scripts/train_chatglm3_6b_pack_loss.sh (the sort plan is written beside the pack plan)
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-6B-64k-base --train_file data/chatglm/10k \
  --batch_method sort --gradient_accumulation_steps 12 --output_dir output/chatglm3-6b-64k-sort "$@"
