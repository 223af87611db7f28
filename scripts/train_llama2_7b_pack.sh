#!/usr/bin/env bash
# Ablation: Llama-2-7B-64k, packing WITHOUT loss weighting (paper Table 3 row "pack": each pack's token mean,
# averaged over packs = Eq. 3).
#   8 GPUs x 1 pack x accumulation 1 = 8 packs per step ~ 96 sequences
# Data: python pre_tokenize.py --model llama --datanum 10k
#       python sort_and_group.py --train_file data/llama/10k --group_size 8 --max_length 65536
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-7B-64k-base --train_file data/llama/10k \
  --batch_method pack --output_dir output/llama2-7b-64k-pack "$@"
