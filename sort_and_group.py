"""Plan the batches of a tokenized store: sorted groups (`sort`) and packs dealt into steps (`pack`).

Run as:
    python sort_and_group.py --train_dir data/chatglm/10k --group_size 8 --max_length 65536 [--balance]

Inputs:
    --train_dir    a store folder written by pre_tokenize.py (meta.json, lengths.npy, ...)
Outputs (into the same folder, read by train.py through longalign/packing.py):
    sort_plan.npz  sequences sorted by length, cut into groups of K (one per device of a step), the groups
                   shuffled with the seed, the last group possibly smaller; nothing dropped
    pack_plan.npz  best-fit-decreasing packs of at most L tokens, each sequence's pack and offset, packs
                   dealt into steps of K (--balance: by predicted cost, so the K devices finish together)
    stats.json     packs vs the lower bound ceil(tokens / L), fill, sequences per pack, the original's
                   next-fit for comparison, predicted idle fractions; one summary line on stdout
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longalign import packing
from longalign.scriptargs import fail, parse_args, run_main
from longalign.store import TokenizedStore, write_json


@dataclass
class Args:
    train_dir: str = field(metadata={"help": "store folder written by pre_tokenize.py"})
    group_size: int = field(default=8, metadata={
        "help": "K: sequences (sort) or packs (pack) per step, one per device; 8 GPUs in the paper. With "
                "train.py --sequence_parallel_size N the N devices of a group share one: K = GPUs / N"})
    max_length: int = field(default=65536, metadata={"help": "L: tokens per pack (64k in the paper)"})
    seed: int = field(default=42, metadata={"help": "seed of the group and step shuffles"})
    balance: bool = field(default=False, metadata={
        "help": "deal packs into steps so the predicted cost of the K devices of a step is even"})
    attention_length: float = field(default=packing.ATTENTION_LENGTH, metadata={
        "help": "l0 of the cost model l + l^2/l0 + r*t (longalign/packing.py): N_body / (d_model * n_layers), "
                "49,400 for Llama-2-7B, 49,800 for ChatGLM3-6B"})
    target_cost: float = field(default=packing.TARGET_COST, metadata={
        "help": "r of the cost model, the output layer's cost per target token: V * d_model / N_body, "
                "0.020 for Llama-2-7B, 0.047 for ChatGLM3-6B"})

    def __post_init__(self):
        if self.group_size < 1 or self.max_length < 1:
            fail(f"--group_size {self.group_size} and --max_length {self.max_length} must be positive.")


def pack_figures(lengths: np.ndarray, packs: list[list[int]], max_length: int) -> dict:
    num_tokens = int(lengths.sum())
    return {"num_packs": len(packs), "fill": num_tokens / (len(packs) * max_length) if packs else 0.0,
            "mean_sequences_per_pack": len(lengths) / len(packs) if packs else 0.0}


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    try:
        store = TokenizedStore(args.train_dir)
    except (FileNotFoundError, ValueError) as e:
        fail(f"--train_dir: {e}")
    lengths, K, L = store.lengths, args.group_size, args.max_length  # lengths: int64 (n,)
    cost = {"num_targets": store.num_target_tokens, "l0": args.attention_length, "r": args.target_cost}
    if len(lengths) and lengths.max() > L:
        fail(f"--train_dir {args.train_dir} holds a sequence of {lengths.max()} tokens, longer than "
             f"--max_length {L}: re-run pre_tokenize.py with --max_length {L}.")
    timings = {}

    # Sort plan: similar lengths share a step, so no device waits long for another.
    t0 = time.perf_counter()
    groups = packing.sort_groups(lengths, K, args.seed)
    packing.write_sort_plan(store.path, groups, K, L, args.seed)
    timings["sort"] = time.perf_counter() - t0

    # Pack plan: best-fit-decreasing over the whole store, then packs dealt into steps of K.
    t0 = time.perf_counter()
    packs = packing.best_fit_decreasing(lengths, L)
    timings["best_fit_decreasing"] = time.perf_counter() - t0
    costs = packing.pack_costs(lengths, packs, **cost)  # (P,)
    steps = {b: packing.deal_steps(costs, K, args.seed, b) for b in (False, True)}
    packing.write_pack_plan(store.path, packs, steps[args.balance], lengths, K, L, args.seed, args.balance)
    t0 = time.perf_counter()
    nf_packs = packing.next_fit(lengths, L)
    timings["next_fit"] = time.perf_counter() - t0

    # Predicted idle fraction of the K devices (cost model in longalign/packing.py) for each method.
    seq_costs = packing.sequence_costs(lengths, **cost)  # (n,)
    naive_steps = [list(range(s, min(s + K, len(lengths)))) for s in range(0, len(lengths), K)]
    idle = {"naive": packing.idle_fraction(seq_costs, naive_steps, K),
            "sort": packing.idle_fraction(seq_costs, groups, K),
            "pack": packing.idle_fraction(costs, steps[False], K),
            "pack_balance": packing.idle_fraction(costs, steps[True], K)}

    num_tokens = int(lengths.sum())
    stats = {"num_sequences": len(lengths), "num_tokens": num_tokens, "max_length": L, "group_size": K,
             "seed": args.seed, "balance": args.balance,
             "lower_bound_packs": math.ceil(num_tokens / L),
             **pack_figures(lengths, packs, L),
             "num_steps": len(steps[args.balance]), "num_sort_groups": len(groups),
             "next_fit": pack_figures(lengths, nf_packs, L),
             "cost_model": {"pack_cost": "sum_i l_i + l_i^2 / l0 + r * t_i", "l0": args.attention_length,
                            "r": args.target_cost},
             "idle_fraction": idle, "seconds": timings}
    write_json(store.path / "stats.json", stats)
    print(f"sort_and_group: {len(lengths)} sequences, {num_tokens:,} tokens -> {len(groups)} sort groups of "
          f"{K}; {len(packs)} packs (lower bound {stats['lower_bound_packs']}, fill {stats['fill']:.4f}, "
          f"{stats['mean_sequences_per_pack']:.1f} seq/pack; next-fit {len(nf_packs)} packs, fill "
          f"{stats['next_fit']['fill']:.4f}) in {len(steps[args.balance])} steps; predicted idle "
          f"{idle['pack_balance' if args.balance else 'pack']:.1%} (balance {idle['pack_balance']:.1%}, "
          f"unbalanced {idle['pack']:.1%}) -> {Path(args.train_dir) / 'stats.json'}")
    return stats


if __name__ == "__main__":
    main()
