#!/usr/bin/env bash
# Llama-2-7B-64k, packing + loss weighting (paper Table 3 row "packing + loss weighting").
#   8 GPUs x 1 pack (<= 65,536 tokens) x accumulation 1 = 8 packs per step ~ 96 sequences (~12 per pack)
# Data: as scripts/train_llama2_7b_pack.sh
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-7B-64k-base --train_file data/llama/10k \
  --batch_method pack --pack_loss --output_dir output/llama2-7b-64k-pack-loss "$@"
