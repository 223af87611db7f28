"""Batching plans for a long-tailed length mix: sorted groups, packs by best-fit-decreasing, steps.

Written by sort_and_group.py into the store folder, read by train.py with `read_sort_plan` and
`read_pack_plan`.

A pack is sequences concatenated up to L tokens; attention stays inside each sequence (cu_seqlens):

    pack      | seq 7 (l=5)    | seq 2 (l=3) | seq 9 (l=2) | pad (not a sequence) |
    tokens    a a a a a          b b b         c c           - - -
    offsets   0                  5             8             (pack tokens = 10)
    cu_seqlens [0, 5, 8, 10]     positions 0 1 2 3 4 0 1 2 0 1

Files (numpy .npz, ragged lists as a flat array plus pointers; ids are int32):

    sort_plan.npz   group_size, max_length, seed, group_seqs (n,), group_ptr (G+1,)
    pack_plan.npz   group_size, max_length, seed, balance, pack_seqs (n,), pack_ptr (P+1,),
                    step_packs (P,), step_ptr (S+1,), pack_of (n,), offset (n,)
                    pack_of[i] / offset[i]: the pack of sequence i and where it starts in that pack
"""

import os
import random
from pathlib import Path

import numpy as np

SORT_PLAN, PACK_PLAN = "sort_plan.npz", "pack_plan.npz"

# ---------------------------------------------------------------------------------------------
# Packing algorithms.


def best_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Pack sequences into bins of `capacity` tokens: longest first, each into the fullest bin it fits.

    The open bins are indexed by remaining capacity in a two-level bitmap (bit c is set when some bin
    has exactly c tokens free; a summary word marks the non-empty 64-bit words), so "the smallest free
    capacity >= l" is two shifts and a lowest-set-bit instead of a scan: O(n log n) for the sort plus
    O(1) per sequence, about a second for a million sequences. Ties go to the bin opened last.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"every length must be in [1, {capacity}]")
    order = np.argsort(-lengths, kind="stable").tolist()
    lens = lengths.tolist()
    words = [0] * ((capacity >> 6) + 1)  # bit (c & 63) of words[c >> 6]: a bin has c tokens free
    summary = 0                          # bit w: words[w] != 0
    free: dict[int, list[int]] = {}      # c -> bins with c tokens free (a stack)
    bins: list[list[int]] = []
    for i in order:
        need = lens[i]
        w = need >> 6
        x = words[w] >> (need & 63)
        if x:
            c = need + (x & -x).bit_length() - 1
        else:
            s = summary >> (w + 1)
            if s:
                w = w + (s & -s).bit_length()
                x = words[w]
                c = (w << 6) + (x & -x).bit_length() - 1
            else:
                c = -1
        if c < 0:  # nothing fits: open a bin
            b = len(bins)
            bins.append([i])
            left = capacity - need
        else:
            stack = free[c]
            b = stack.pop()
            bins[b].append(i)
            if not stack:
                w = c >> 6
                words[w] &= ~(1 << (c & 63))
                if not words[w]:
                    summary &= ~(1 << w)
            left = c - need
        if left:
            stack = free.setdefault(left, [])
            if not stack:
                w = left >> 6
                words[w] |= 1 << (left & 63)
                summary |= 1 << w
            stack.append(b)
    return bins


def next_fit(lengths, capacity: int) -> list[list[int]]:
    """The original's packing, for comparison: in data order, start a new pack when the next one does
    not fit in the current pack."""
    packs, current, used = [], [], 0
    for i, need in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        if current and used + need > capacity:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += need
    return packs + ([current] if current else [])


def sort_groups(lengths, group_size: int, seed: int) -> list[list[int]]:
    """Sorted batching: sequences by length, consecutive groups of K (one per device of a step), the
    full groups shuffled with the seed; the remainder (fewer than K) is the last group, nothing dropped."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    full = len(order) // group_size * group_size
    groups = [order[g:g + group_size] for g in range(0, full, group_size)]
    random.Random(seed).shuffle(groups)
    return groups + ([order[full:]] if full < len(order) else [])


def longalign_shaped_lengths(max_length: int, num_long: int = 10_000, num_short: int = 30_000,
                             seed: int = 0) -> np.ndarray:
    """int64 (num_long + num_short,) token lengths shaped like the paper's mix, for tests and benchmarks.

    Long (LongAlign-10k): L/8 to L, log-uniform in length squared towards the short end (most near 8k,
    a tail to 64k at L = 64k). Short (ShareGPT): log-normal with median 500 tokens (sigma 1), clipped to
    [16, L], independent of L. With the defaults at L = 64k a pack holds about 12 sequences, as in the
    paper. The order is shuffled (the store's order)."""
    rng = np.random.default_rng(seed)
    long = (max_length / 8 * 8 ** (rng.random(num_long) ** 2)).astype(np.int64)
    short = np.exp(rng.normal(np.log(500), 1.0, num_short)).astype(np.int64)
    lengths = np.clip(np.concatenate([long, short]), 16, max_length)
    return rng.permutation(lengths)


# ---------------------------------------------------------------------------------------------
# Step cost and dealing packs into steps.
#
# Cost model of one pack (one device's work in a step), in units of one token through the model's body:
#     cost = sum_i (l_i + l_i**2 / l0 + r * t_i)
# for sequences i of l_i tokens with t_i target tokens. Per token the transformer body (every matmul but
# the embedding lookup and the output layer) costs 6 * N_body FLOPs (forward + backward); causal attention
# over a sequence of l tokens costs 6 * d_model * n_layers * l**2 FLOPs in total (QK^T and PV, half of it
# masked); the output layer runs on the target tokens only (longalign/loss.py), 6 * V * d_model each. So
#     l0 = N_body / (d_model * n_layers),   r = V * d_model / N_body
# Llama-2-7B: l0 = 49,400 tokens, r = 0.020; ChatGLM3-6B: l0 = 49,800, r = 0.047 (`cost_constants`).
# Packs are blocks on the diagonal, so a pack of many short sequences costs much less attention than one
# 64k sequence of the same tokens.

ATTENTION_LENGTH = 49_400  # l0 of Llama-2-7B, the paper's main model
TARGET_COST = 0.020        # r of Llama-2-7B


def cost_constants(num_params: int, vocab_size: int, hidden_size: int, num_layers: int,
                   tied_embeddings: bool = False) -> tuple[float, float]:
    """(l0, r) of the cost model for a model of num_params parameters in all (embedding and output layer
    included, counted once when tied)."""
    body = num_params - vocab_size * hidden_size * (1 if tied_embeddings else 2)
    return body / (hidden_size * num_layers), vocab_size * hidden_size / body


def sequence_costs(lengths, num_targets=None, l0: float = ATTENTION_LENGTH, r: float = TARGET_COST
                   ) -> np.ndarray:
    """float64 (n,) predicted cost of each sequence alone: l + l**2 / l0 + r * t (t = 0 when not given)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    targets = 0.0 if num_targets is None else np.asarray(num_targets, dtype=np.float64)
    return lengths + lengths ** 2 / l0 + r * targets


def pack_costs(lengths, packs: list[list[int]], num_targets=None, l0: float = ATTENTION_LENGTH,
               r: float = TARGET_COST) -> np.ndarray:
    """float64 (P,) predicted cost of each pack: the sum over its sequences (attention is block-diagonal)."""
    flat, ptr = _flat(packs)
    seq = sequence_costs(lengths, num_targets, l0, r)
    return np.add.reduceat(seq[flat], ptr[:-1]) if len(packs) else np.zeros(0)


def deal_steps(costs, group_size: int, seed: int, balance: bool) -> list[list[int]]:
    """Deal pack ids into steps of K packs (one per device). Unbalanced: packs in a seeded random order.
    Balanced: packs sorted by predicted cost so the K packs of a step cost about the same, then the steps
    shuffled with the seed. Either way a remainder of fewer than K packs is the last step."""
    costs = np.asarray(costs, dtype=np.float64)
    if balance:
        order = np.argsort(-costs, kind="stable").tolist()
    else:
        order = list(range(len(costs)))
        random.Random(seed).shuffle(order)
    full = len(order) // group_size * group_size
    steps = [order[s:s + group_size] for s in range(0, full, group_size)]
    if balance:
        random.Random(seed).shuffle(steps)
    return steps + ([order[full:]] if full < len(order) else [])


def idle_fraction(costs, steps: list[list[int]], group_size: int) -> float:
    """Predicted fraction of device time spent waiting: each step lasts as long as its slowest device, a
    device without a pack in the last step waits the whole step."""
    costs = np.asarray(costs, dtype=np.float64)
    busy = sum(costs[s].sum() for s in steps)
    total = sum(group_size * costs[s].max() for s in steps if s)
    return float(1 - busy / total) if total else 0.0


# ---------------------------------------------------------------------------------------------
# Plan files.


def _flat(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
    return np.fromiter((i for x in lists for i in x), dtype=np.int32, count=int(ptr[-1])), ptr


def _ragged(flat: np.ndarray, ptr: np.ndarray) -> list[list[int]]:
    flat, ptr = flat.tolist(), ptr.tolist()
    return [flat[a:b] for a, b in zip(ptr[:-1], ptr[1:], strict=True)]


def _plan_file(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    path = path / name if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run sort_and_group.py --train_dir {path.parent}")
    return path


def write_sort_plan(folder, groups: list[list[int]], group_size: int, max_length: int, seed: int) -> Path:
    seqs, ptr = _flat(groups)
    path = Path(folder) / SORT_PLAN
    np.savez(path, group_size=group_size, max_length=max_length, seed=seed, group_seqs=seqs, group_ptr=ptr)
    return path


def read_sort_plan(path) -> dict:
    """{"group_size", "max_length", "seed", "groups"}: path is the store folder or the .npz file."""
    with np.load(_plan_file(path, SORT_PLAN)) as z:
        return {"group_size": int(z["group_size"]), "max_length": int(z["max_length"]), "seed": int(z["seed"]),
                "groups": _ragged(z["group_seqs"], z["group_ptr"])}


def write_pack_plan(folder, packs: list[list[int]], steps: list[list[int]], lengths, group_size: int,
                    max_length: int, seed: int, balance: bool) -> Path:
    lengths = np.asarray(lengths, dtype=np.int64)
    pack_seqs, pack_ptr = _flat(packs)
    step_packs, step_ptr = _flat(steps)
    pack_of = np.empty(len(lengths), dtype=np.int32)
    offset = np.empty(len(lengths), dtype=np.int32)
    pack_of[pack_seqs] = np.repeat(np.arange(len(packs), dtype=np.int32), np.diff(pack_ptr))
    # offset of each sequence = its start in the packs laid end to end minus the start of its pack
    starts = np.cumsum(lengths[pack_seqs]) - lengths[pack_seqs]                  # (n,) in pack_seqs order
    offset[pack_seqs] = starts - np.repeat(starts[pack_ptr[:-1]], np.diff(pack_ptr))
    path = Path(folder) / PACK_PLAN
    np.savez(path, group_size=group_size, max_length=max_length, seed=seed, balance=balance,
             pack_seqs=pack_seqs, pack_ptr=pack_ptr, step_packs=step_packs, step_ptr=step_ptr,
             pack_of=pack_of, offset=offset)
    return path


def read_pack_plan(path) -> dict:
    """{"group_size", "max_length", "seed", "balance", "packs", "steps", "pack_of", "offset"}: packs are
    sequence ids in concatenation order, steps are pack ids (K per step, the last may hold fewer);
    pack_of / offset are int32 (n,) arrays indexed by sequence id."""
    with np.load(_plan_file(path, PACK_PLAN)) as z:
        return {"group_size": int(z["group_size"]), "max_length": int(z["max_length"]), "seed": int(z["seed"]),
                "balance": bool(z["balance"]), "packs": _ragged(z["pack_seqs"], z["pack_ptr"]),
                "steps": _ragged(z["step_packs"], z["step_ptr"]),
                "pack_of": z["pack_of"], "offset": z["offset"]}
