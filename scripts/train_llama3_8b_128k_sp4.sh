#!/usr/bin/env bash
# Llama-3.1-8B (128k context), packing + loss weighting at 128k tokens: sequence parallelism 4 x data
# parallelism 2 on 8 GPUs (ranks 0-3 split one pack, ranks 4-7 another).
#   8 GPUs / SP 4 = K 2 packs (<= 131,072 tokens) per micro-step x accumulation 4 = 8 packs per step
# Memory per GPU (python bench/bench_sp_memory.py; formula, not a run: no GPU in this build), bf16,
# activation checkpointing, ZeRO-3 with optimizer and parameters offloaded:
#   t = 131,072 / 4 = 32,768 tokens per GPU
#   checkpointed layer inputs  32 layers x 32,768 x 4,096 x 2 B           =  8.6 GB
#   one layer recomputed + its backward (norms, q/k/v, MLP 14,336 wide)   =  9.3 GB
#   final norm, loss (fused, one 1,024 x 128,256 fp32 chunk), dL/dW        =  2.7 GB
#   bf16 parameter + gradient shards (8.03 B params / 8) + 2 gathered layers =  4.9 GB
#   total ~ 25.4 GB of 80 (SP 1 would need ~ 82 GB: it does not fit)
# Heads: 32 query heads / 4 = 8 per GPU, 8 KV heads / 4 = 2 per GPU.
# Data: python pre_tokenize.py --model meta-llama/Llama-3.1-8B-Instruct --datanum 10k --max_length 131072 \
#           --out_dir data/llama3-128k/10k
#       python sort_and_group.py --train_file data/llama3-128k/10k --group_size 2 --max_length 131072
source "$(dirname "$0")/paper_setup.sh"
"${LAUNCH[@]}" train.py "${PAPER_ARGS[@]}" \
  --model_name_or_path meta-llama/Llama-3.1-8B-Instruct --train_file data/llama3-128k/10k \
  --batch_method pack --pack_loss --max_length 131072 --sequence_parallel_size 4 \
  --gradient_accumulation_steps 4 --output_dir output/llama3-8b-128k-pack-loss-sp4 "$@"
