# The training setup shared by every paper row (LongAlign §4.1), sourced by scripts/train_*.sh.
#
#   hardware   8 x 80 GB GPUs (A800/A100) on one node; more nodes through a DeepSpeed hostfile:
#              HOSTFILE=scripts/hostfile bash scripts/train_....sh  (lines "node1 slots=8"; every node
#              sees the same repo and data paths; the plan's K must then be the total GPU count)
#   optimizer  Adam beta = (0.9, 0.95), lr 2e-5, warmup 3 % then cosine, 2 epochs, no weight decay
#   memory     DeepSpeed ZeRO-3 with parameters and optimizer offloaded to CPU, bf16, gradient checkpointing
#   batch      1 sequence or pack per GPU per micro-step (--per_device_train_batch_size 1); each launcher
#              states its K (= GPUs x 1, the plan's --group_size) and accumulation
#
# Flags equal to train.py/transformers defaults are left out (adam_beta1 0.9, weight_decay 0, ...).
# A launcher's own arguments go last and win over its flags (the last of a repeated flag counts):
#   bash scripts/train_chatglm3_6b_sort.sh --train_dir runs/t3/data/10k --output_dir runs/t3/sort --seed 1
# is how scripts/reproduce.py runs each row of Tables 2 and 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NUM_GPUS=${NUM_GPUS:-8}
LAUNCH=(deepspeed --num_gpus "$NUM_GPUS")
if [ -n "${HOSTFILE:-}" ]; then LAUNCH=(deepspeed --hostfile "$HOSTFILE"); fi

PAPER_ARGS=(
  --deepspeed ds_config/stage3_offload.json
  --dtype bfloat16 --bf16 true --activation_checkpointing true
  --learning_rate 2e-5 --warmup_steps 0.03 --lr_scheduler_type cosine --num_train_epochs 2 --adam_beta2 0.95
  --per_device_train_batch_size 1
  --logging_steps 1 --save_steps 100 --save_total_limit 2
)
