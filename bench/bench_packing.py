"""Packing quality and speed: best-fit-decreasing (ours) against the original's next-fit, and --balance.

Run as:
    python bench/bench_packing.py [--num_long 10000 --num_short 30000 --million 1000000 --group_size 8]

On a generated LongAlign-shaped mix (longalign/packing.py `longalign_shaped_lengths`: 10k long samples from
L/8 to L, long-tailed, + 30k ShareGPT-like chats of median 500 tokens; about 12 sequences per 64k pack as in
the paper) at L = 8192 and 65536, prints for each algorithm: packs, the lower bound ceil(tokens / L), fill,
sequences per pack and time; then the predicted idle fraction of K devices (cost model l + l^2/l0,
longalign/packing.py) for naive, sort, pack and pack --balance; then the time of best-fit-decreasing on a
million sequences of the same shape.
"""

import math
import time
from dataclasses import dataclass, field

from longalign import packing
from longalign.scriptargs import parse_args, run_main


@dataclass
class Args:
    num_long: int = field(default=10_000, metadata={"help": "long samples (LongAlign-10k)"})
    num_short: int = field(default=30_000, metadata={"help": "short chats (ShareGPT)"})
    million: int = field(default=1_000_000, metadata={"help": "sequences of the timing run (0: skip)"})
    group_size: int = field(default=8, metadata={"help": "K devices per step"})
    seed: int = field(default=0, metadata={"help": "seed of the generated lengths and of the shuffles"})


def timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t0


def main(argv=None):
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    K = args.group_size

    for L in (8192, 65536):
        lengths = packing.longalign_shaped_lengths(L, args.num_long, args.num_short, args.seed)
        bound = math.ceil(lengths.sum() / L)
        print(f"\nL = {L}: {len(lengths):,} sequences ({args.num_long:,} long, {args.num_short:,} short), "
              f"{lengths.sum():,} tokens, lower bound {bound:,} packs")
        results = {}
        for name, fn in (("best-fit-decreasing", packing.best_fit_decreasing), ("next-fit (original)",
                                                                                packing.next_fit)):
            packs, seconds = timed(fn, lengths, L)
            assert sorted(i for pk in packs for i in pk) == list(range(len(lengths)))
            assert max(lengths[pk].sum() for pk in packs) <= L
            results[name] = packs
            print(f"  {name:20s} {len(packs):7,} packs (+{len(packs) - bound:,} over the bound)  fill "
                  f"{lengths.sum() / (len(packs) * L):.4f}  {len(lengths) / len(packs):5.2f} seq/pack  {seconds:.2f} s")
        packs = results["best-fit-decreasing"]
        costs = packing.pack_costs(lengths, packs)
        seq_costs = packing.sequence_costs(lengths)
        idle = {
            "naive (data order)": packing.idle_fraction(
                seq_costs, [list(range(s, min(s + K, len(lengths)))) for s in range(0, len(lengths), K)], K),
            "sort": packing.idle_fraction(seq_costs, packing.sort_groups(lengths, K, args.seed), K),
            "pack": packing.idle_fraction(costs, packing.deal_steps(costs, K, args.seed, False), K),
            "pack --balance": packing.idle_fraction(costs, packing.deal_steps(costs, K, args.seed, True), K),
        }
        print(f"  predicted idle fraction of {K} devices (cost l + l^2/{packing.ATTENTION_LENGTH}): "
              + ", ".join(f"{k} {v:.2%}" for k, v in idle.items()))

    if args.million:
        n_long = args.million * args.num_long // (args.num_long + args.num_short)
        lengths = packing.longalign_shaped_lengths(65536, n_long, args.million - n_long, args.seed)
        packs, seconds = timed(packing.best_fit_decreasing, lengths, 65536)
        _, nf_seconds = timed(packing.next_fit, lengths, 65536)
        print(f"\n{len(lengths):,} sequences at L = 65536: best-fit-decreasing {seconds:.2f} s "
              f"({len(packs):,} packs, bound {math.ceil(lengths.sum() / 65536):,}), next-fit {nf_seconds:.2f} s")


if __name__ == "__main__":
    main()
