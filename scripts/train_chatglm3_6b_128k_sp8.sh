#!/usr/bin/env bash
# ChatGLM3-6B-128k, packing + loss weighting at 128k tokens, Ulysses sequence parallelism over all 8 GPUs.
#   8 GPUs / SP 8 = K 1 pack (<= 131,072 tokens) per micro-step x accumulation 8 = 8 packs per step (the
#   paper's global batch of 8 packs, each now twice as long)
# Memory per GPU (python bench/bench_sp_memory.py; formula, not a run: no GPU in this build), bf16,
# activation checkpointing, ZeRO-3 with optimizer and parameters offloaded:
#   t = 131,072 / 8 = 16,384 tokens per GPU
#   checkpointed layer inputs  28 layers x 16,384 x 4,096 x 2 B           =  3.8 GB
#   one layer recomputed + its backward (norms, q/k/v, MLP 13,696 wide)   =  4.5 GB
#   final norm, loss (fused, one 1,024 x 65,024 fp32 chunk), dL/dW         =  1.3 GB
#   bf16 parameter + gradient shards (6.24 B params / 8) + 2 gathered layers =  3.9 GB
#   total ~ 13.5 GB of 80 (without SP, one GPU would hold the whole row: ~ 75 GB, no headroom left)
# Heads: 32 query heads / 8 = 4 per GPU; the 2 KV groups are replicated 4x by DeepSpeed (exact).
# Data: python pre_tokenize.py --model THUDM/chatglm3-6b-128k --template chatglm \
#           --datanum 10k --max_length 131072 --out_dir data/chatglm3-128k/10k
#       python sort_and_group.py --train_file data/chatglm3-128k/10k --group_size 1 --max_length 131072
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path THUDM/chatglm3-6b-128k --train_file data/chatglm3-128k/10k \
  --batch_method pack --pack_loss --max_length 131072 --sequence_parallel_size 8 \
  --gradient_accumulation_steps 8 --output_dir output/chatglm3-6b-128k-pack-loss-sp8 "$@"
