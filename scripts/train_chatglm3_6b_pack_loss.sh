#!/usr/bin/env bash
# LongAlign-6B-64k: ChatGLM3-6B-64k, packing + loss weighting (paper Table 3 row "packing + loss weighting",
# Figure 5 "pack": 20.5 h on 8 x A800).
#   8 GPUs x 1 pack (<= 65,536 tokens) x accumulation 1 = 8 packs per step ~ 96 sequences (~12 per pack)
# Data: python pre_tokenize.py --model chatglm --datanum 10k
#       python sort_and_group.py --train_file data/chatglm/10k --group_size 8 --max_length 65536
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/LongAlign-6B-64k-base --train_file data/chatglm/10k \
  --batch_method pack --pack_loss --output_dir output/chatglm3-6b-64k-pack-loss "$@"
