"""The step layout and the loss weights of longalign/schedule.py, against brute force and accelerate's own
round-robin dealing (no model, no store: milliseconds)."""

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from longalign.batches import ScheduleSampler
from longalign.schedule import Schedule

RNG = np.random.default_rng(0)
N_SEQ = 23
LENGTHS = RNG.integers(20, 400, N_SEQ)
TARGETS = (LENGTHS * RNG.uniform(0.1, 0.6, N_SEQ)).astype(np.int64)
TARGETS[5] = 0  # a sequence without targets must weigh nothing and not count in M


def pack_plan(K: int):
    """Hand-made packs of 1-4 sequences, dealt K per step (the last step short)."""
    order, packs = RNG.permutation(N_SEQ).tolist(), []
    while order:
        take = int(RNG.integers(1, 5))
        packs.append(order[:take])
        order = order[take:]
    steps = [list(range(s, min(s + K, len(packs)))) for s in range(0, len(packs), K)]
    return packs, steps


def make(method, W=2, B=1, A=2, reduction="sequence", seed=3):
    K = W * B
    kwargs = {}
    if method == "sort":
        ids = np.argsort(LENGTHS, kind="stable").tolist()
        kwargs["groups"] = [ids[s:s + K] for s in range(0, N_SEQ, K)]
    elif method == "pack":
        kwargs["packs"], kwargs["groups"] = pack_plan(K)
    return Schedule(method, TARGETS, LENGTHS, world_size=W, per_device=B, accumulation=A, seed=seed,
                    reduction=reduction, **kwargs)


@pytest.mark.parametrize("method", ["naive", "sort", "pack"])
@pytest.mark.parametrize("W,B", [(1, 1), (2, 1), (2, 3), (4, 1)])
def test_every_sequence_once_per_epoch(method, W, B):
    s = make(method, W, B)
    for epoch in (0, 1):
        assert len(s.slots(epoch)) == len(s) == s.num_micro_steps * W * B
        micro = s.micro_steps(epoch)
        assert all(len(m) == W * B for m in micro)
        assert all(None not in m for m in micro[:-1]) or method != "naive"  # naive pads only its last micro-step
        ids = [i for m in micro for u in m if u is not None for i in u]
        assert sorted(ids) == list(range(N_SEQ))  # nothing dropped, nothing twice


@pytest.mark.parametrize("method", ["naive", "sort", "pack"])
@pytest.mark.parametrize("W,B", [(2, 1), (2, 2), (3, 1)])
def test_accelerate_deals_each_rank_its_plan_units(method, W, B):
    """Through accelerate's BatchSamplerShard (what Trainer.get_train_dataloader uses): rank r's j-th batch
    is units [r*B, (r+1)*B) of micro-step j, i.e. with B = 1 the r-th element of plan group j."""
    s = make(method, W, B)
    sampler = ScheduleSampler(s)
    sampler.set_epoch(1)
    micro = s.micro_steps(1)
    for r in range(W):
        shard = BatchSamplerShard(BatchSampler(sampler, B, drop_last=False), num_processes=W, process_index=r)
        batches = list(shard)
        assert len(batches) == len(micro)  # no batch repeated to even out ranks
        for j, batch in enumerate(batches):
            want = micro[j][r * B:(r + 1) * B]
            for slot, unit in zip(batch, want, strict=True):
                if unit is None:
                    assert slot.coefs == (0.0,)  # the dummy adds nothing
                else:
                    assert slot.seq_ids == unit


def brute_force_step_losses(s: Schedule, epoch: int, ce: dict[int, np.ndarray]):
    """(schedule's weighted loss, Eq. 2 reference, Eq. 3 reference) per optimizer step, from per-token CE."""
    out, slots, k = [], s.slots(epoch), 0
    for step in s.optimizer_steps(epoch):
        n_units = sum(len(m) for m in step)
        weighted = sum(c * ce[i].sum() for slot in slots[k:k + n_units]
                       for i, c in zip(slot.seq_ids, slot.coefs, strict=True)) / s.world_size
        k += n_units
        units = [u for m in step for u in m if u is not None]
        seqs = [i for u in units for i in u if TARGETS[i] > 0]
        eq2 = np.mean([ce[i].mean() for i in seqs])
        tokens = np.concatenate([ce[i] for i in seqs]).mean()
        eq3 = np.mean([np.concatenate([ce[i] for i in u if TARGETS[i] > 0]).mean()
                       for u in units if TARGETS[list(u)].sum() > 0])
        out.append((weighted, eq2, tokens, eq3))
    return out


@pytest.mark.parametrize("method", ["naive", "sort", "pack"])
@pytest.mark.parametrize("W,B,A", [(1, 1, 4), (2, 1, 2), (2, 2, 3)])
def test_weights_give_the_paper_equations(method, W, B, A):
    ce = {i: RNG.uniform(0.1, 5.0, TARGETS[i]) for i in range(N_SEQ)}
    seq = brute_force_step_losses(make(method, W, B, A, "sequence"), 1, ce)
    tok = brute_force_step_losses(make(method, W, B, A, "token"), 1, ce)
    for (weighted, eq2, _, _), (weighted_tok, _, token_mean, _) in zip(seq, tok, strict=True):
        assert weighted == pytest.approx(eq2, rel=1e-12)
        assert weighted_tok == pytest.approx(token_mean, rel=1e-12)
    if method == "pack":
        mean = brute_force_step_losses(make(method, W, B, A, "pack_mean"), 1, ce)
        for weighted, _, _, eq3 in mean:
            assert weighted == pytest.approx(eq3, rel=1e-12)
        # negative control: Eq. 3 is not Eq. 2 on this data
        assert max(abs(w - e2) / e2 for w, e2, _, _ in mean) > 1e-2


def test_counts_are_over_the_whole_step_not_per_pack():
    """M is the step's sequences over all ranks and micro-steps: each coefficient is W / (M N_i)."""
    s = make("pack", W=2, B=1, A=3)
    slots, k = s.slots(0), 0
    for step in s.optimizer_steps(0):
        n_units = sum(len(m) for m in step)
        M = sum(1 for m in step for u in m if u is not None for i in u if TARGETS[i] > 0)
        for slot in slots[k:k + n_units]:
            for i, c in zip(slot.seq_ids, slot.coefs, strict=True):
                assert c == 0.0 if TARGETS[i] == 0 else c == pytest.approx(2 / (M * TARGETS[i]))
        k += n_units


def test_order_is_a_function_of_seed_and_epoch():
    a, b = make("naive", seed=7), make("naive", seed=7)
    assert a.slots(1) == b.slots(1)              # reproducible, so a resume replays the same epoch
    assert a.slots(0) != a.slots(1)              # reshuffled every epoch
    assert a.slots(0) != make("naive", seed=8).slots(0)
    s = make("sort")
    plan_order = [tuple(g) for g in s.groups]
    assert [tuple(i for u in m if u for i in u) for m in s.micro_steps(0)] == plan_order  # epoch 0 = plan order
    assert sorted(s.micro_steps(1), key=str) == sorted(s.micro_steps(0), key=str)           # same groups later


def test_last_optimizer_step_may_be_short_like_the_trainer():
    s = make("naive", W=1, B=1, A=5)
    steps = s.optimizer_steps(0)
    assert [len(x) for x in steps] == [5, 5, 5, 5, 3]
    assert sum(st.sequences for st in s.step_stats(0)) == N_SEQ - 1  # sequence 5 has no targets
    assert sum(st.tokens for st in s.step_stats(0)) == LENGTHS.sum()
