"""Who trains on what, when, and with which loss weight: the step layout of naive, sort and pack.

Used by train.py (through a sampler, one flat list per epoch) and bench/bench_batching.py (to time
the same micro-batches on K simulated devices).

Vocabulary (paper §3.3 and Eq. 2-4):
    K = world_size x per-device batch   units (sequences or packs) processed side by side in one micro-step
    A = gradient accumulation steps     micro-steps in one optimizer step
    W = world_size                      processes; their gradients are AVERAGED (DDP and DeepSpeed)
    M = sequences of one optimizer step, over all W ranks and all A micro-steps
    N_i = target tokens of sequence i   (store.num_target_tokens)

One epoch is a list of micro-steps; a micro-step is K units; a unit is a tuple of sequence ids (one id
for naive and sort, the pack's ids in concatenation order for pack) or None, a dummy for a device
that the last, short group leaves without work. Optimizer step s of an epoch covers micro-steps
[s*A, (s+1)*A) (the last one may have fewer, exactly as the HF Trainer cuts the epoch).

    naive   a permutation of all ids seeded by (seed, epoch), cut into micro-steps of K
    sort    the sort plan's groups (K ids each), in plan order in epoch 0, permuted by (seed, epoch) after
    pack    the pack plan's steps (K packs each), same rule

Rank r of a micro-step takes units [r*B, (r+1)*B): with B = 1, the r-th element of each plan group.
The flat sampler order is therefore micro-step by micro-step, rank-major, and the Trainer's round-robin
dealing of batches of B (accelerate's BatchSamplerShard: batch j goes to rank j mod W) hands every rank
exactly the units the plan assigns to it (tests/test_schedule.py checks this through accelerate itself).

Every target token t of sequence i in a unit gets the loss weight w_t = coef(i); the model returns
sum_t w_t CE_t and the gradients are averaged over W ranks and summed over A micro-steps, so the step
gradient is that of  (1/W) * sum over all units of sum_t w_t CE_t.  `step_coefficients` picks:
    sequence (Eq. 2, and Eq. 4 for pack + --pack_loss):  w = W / (M * N_i)
              -> step loss = (1/M) sum_i L_i / N_i, every sequence weighs the same however packed
    token:    w = W / T, T = target tokens of the whole step -> the mean over all target tokens
    pack_mean (Eq. 3, pack without --pack_loss, as the original): w = W / (P * T_p) for every token of
              pack p, P = packs of the step, T_p = target tokens of pack p -> mean over packs of each
              pack's token mean (sequences in small packs, and long answers, weigh more)
A dummy unit carries the micro-step's shortest sequence with weight 0: it joins the forward/backward (so every rank runs
the same collective calls under ZeRO-3) and adds exactly zero to loss and gradients.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

METHODS = ("naive", "sort", "pack")
REDUCTIONS = ("sequence", "token", "pack_mean")


class Slot(NamedTuple):
    """What one unit contributes: sequence ids and the loss weight of each one's target tokens."""
    seq_ids: tuple[int, ...]
    coefs: tuple[float, ...]


@dataclass
class StepStats:
    """Totals of one optimizer step over all ranks and micro-steps (dummies excluded)."""
    sequences: int       # M
    target_tokens: int   # sum of N_i
    tokens: int          # input tokens


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch): resuming mid-run replays it exactly."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class Schedule:
    """The deterministic layout of every epoch for one method and one (W, B, A).

    `units` are what the plan gives: for naive every sequence alone (shuffled per epoch), for sort the
    plan's groups, for pack the plan's steps of packs (`packs` maps a pack id to its sequence ids).
    """

    def __init__(self, method: str, num_target_tokens: np.ndarray, lengths: np.ndarray, *, world_size: int,
                 per_device: int, accumulation: int, seed: int, reduction: str,
                 groups: list[list[int]] | None = None, packs: list[list[int]] | None = None):
        if method not in METHODS:
            raise ValueError(f"batch method must be one of {METHODS}, got {method!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.method, self.reduction, self.seed = method, reduction, seed
        self.world_size, self.per_device, self.accumulation = world_size, per_device, accumulation
        self.K = world_size * per_device
        self.num_target_tokens = np.asarray(num_target_tokens, dtype=np.int64)  # (n,) N_i
        self.lengths = np.asarray(lengths, dtype=np.int64)                      # (n,)
        n = len(self.lengths)
        if method == "naive":
            self.num_micro_steps = -(-n // self.K)
        else:
            if groups is None or (method == "pack" and packs is None):
                raise ValueError(f"batch method {method} needs its plan")
            too_big = [g for g in groups if len(g) > self.K]
            if too_big:
                raise ValueError(f"a plan group holds {len(too_big[0])} units but K = {self.K}")
            self.groups = [list(g) for g in groups]
            self.num_micro_steps = len(self.groups)
        self.packs = [tuple(int(i) for i in p) for p in packs] if packs is not None else None
        self.num_steps = -(-self.num_micro_steps // accumulation)  # optimizer steps per epoch

    # -----------------------------------------------------------------------------------------
    # Layout

    def micro_steps(self, epoch: int) -> list[list[tuple[int, ...] | None]]:
        """The epoch's micro-steps, each K units (None = dummy), rank-major."""
        K = self.K
        if self.method == "naive":
            order = epoch_permutation(len(self.lengths), self.seed, epoch).tolist()
            steps = [[(i,) for i in order[s:s + K]] for s in range(0, len(order), K)]
        else:
            order = range(len(self.groups))
            if epoch > 0:  # epoch 0 keeps the plan's (already shuffled) order
                order = epoch_permutation(len(self.groups), self.seed, epoch).tolist()
            if self.method == "sort":
                steps = [[(int(i),) for i in self.groups[g]] for g in order]
            else:
                steps = [[self.packs[p] for p in self.groups[g]] for g in order]
        return [units + [None] * (K - len(units)) for units in steps]

    def optimizer_steps(self, epoch: int) -> list[list[list[tuple[int, ...] | None]]]:
        """Micro-steps grouped A at a time (the last optimizer step of an epoch may hold fewer)."""
        micro = self.micro_steps(epoch)
        return [micro[s:s + self.accumulation] for s in range(0, len(micro), self.accumulation)]

    # -----------------------------------------------------------------------------------------
    # Eq. 2-4: the loss weight of each sequence, from the totals of the WHOLE optimizer step

    def step_coefficients(self, step: list[list[tuple[int, ...] | None]]) -> dict[tuple[int, int], float]:
        """{(unit position in the step, sequence id): coef}; absent = 0 (dummies, sequences without targets)."""
        N, W = self.num_target_tokens, self.world_size
        real = [(pos, unit) for pos, unit in enumerate(u for micro in step for u in micro) if unit is not None]
        coefs: dict[tuple[int, int], float] = {}
        if self.reduction == "sequence":
            # Eq. 2 / Eq. 4: w = W / (M * N_i), M over the whole step (all ranks, all micro-steps)
            M = sum(int(N[i] > 0) for _, unit in real for i in unit)
            for pos, unit in real:
                for i in unit:
                    if N[i] > 0:
                        coefs[pos, i] = W / (M * int(N[i]))
        elif self.reduction == "token":
            # token mean over the step: w = W / T
            T = sum(int(N[i]) for _, unit in real for i in unit)
            for pos, unit in real:
                for i in unit:
                    if N[i] > 0:
                        coefs[pos, i] = W / T
        else:
            # Eq. 3 (pack without --pack_loss): w = W / (P * T_p), P packs of the step, T_p targets of pack p
            totals = {pos: sum(int(N[i]) for i in unit) for pos, unit in real}
            P = sum(t > 0 for t in totals.values())
            for pos, unit in real:
                for i in unit:
                    if N[i] > 0:
                        coefs[pos, i] = W / (P * totals[pos])
        return coefs

    def slots(self, epoch: int) -> list[Slot]:
        """The epoch flattened in sampler order: step, micro-step, rank, unit; each with its weights."""
        out: list[Slot] = []
        for step in self.optimizer_steps(epoch):
            coefs = self.step_coefficients(step)
            pos = 0
            for micro in step:
                # the dummies run the micro-step's shortest sequence with weight 0: the least wasted work
                filler = (min((i for u in micro if u is not None for i in u), key=lambda i: self.lengths[i]),)
                for unit in micro:
                    if unit is None:
                        out.append(Slot(filler, (0.0,)))
                    else:
                        out.append(Slot(unit, tuple(coefs.get((pos, i), 0.0) for i in unit)))
                    pos += 1
        return out

    def step_stats(self, epoch: int) -> list[StepStats]:
        """M, target tokens and tokens of each optimizer step of the epoch (for the log line)."""
        stats = []
        for step in self.optimizer_steps(epoch):
            ids = [i for micro in step for unit in micro if unit is not None for i in unit]
            stats.append(StepStats(sequences=int((self.num_target_tokens[ids] > 0).sum()),
                                   target_tokens=int(self.num_target_tokens[ids].sum()),
                                   tokens=int(self.lengths[ids].sum())))
        return stats

    def __len__(self) -> int:
        """Slots per epoch (the same every epoch)."""
        return self.num_micro_steps * self.K
