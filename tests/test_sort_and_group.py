"""sort_and_group.py and longalign/packing.py: best-fit-decreasing against a brute-force reference, plan
invariants (every sequence exactly once, no pack over L, offsets), the fill bound, balance, determinism."""

import math

import numpy as np
import pytest

import pre_tokenize
import sort_and_group
from longalign import packing


def brute_force_bfd(lengths, capacity, pick=min):
    """Reference: for each sequence, longest first, scan every bin for the fullest one it fits (pick=max:
    the emptiest one, worst-fit, a negative control)."""
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = pick(fits, key=lambda b: free[b])
            bins[b].append(i)
            free[b] -= lengths[i]
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def free_before(lengths, bins, capacity):
    """For each sequence, the free space of the bin it went into just before it did (capacity for a new
    bin). Bins with equal free space are interchangeable, so this is what defines a best-fit decision."""
    out = {}
    for b in bins:
        used = 0
        for i in b:
            out[i] = capacity - used
            used += lengths[i]
    return [out[i] for i in range(len(lengths))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfd_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, 1500).tolist() + [1000] * 3 + [999, 1]
    got = packing.best_fit_decreasing(lengths, 1000)
    assert free_before(lengths, got, 1000) == free_before(lengths, brute_force_bfd(lengths, 1000), 1000)
    # negative control: worst-fit decreasing decides differently, and the check sees it
    assert free_before(lengths, got, 1000) != free_before(lengths, brute_force_bfd(lengths, 1000, max), 1000)


@pytest.mark.parametrize("L", [8192, 65536])
def test_bfd_fill_on_longalign_shaped_mix(L):
    lengths = packing.longalign_shaped_lengths(L, num_long=2000, num_short=6000, seed=3)
    packs = packing.best_fit_decreasing(lengths, L)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(len(lengths)))                       # every sequence exactly once
    assert max(lengths[p].sum() for p in packs) <= L               # no pack over L
    bound = math.ceil(lengths.sum() / L)
    assert len(packs) <= bound + 1 and lengths.sum() / (len(packs) * L) >= 0.99
    nf = packing.next_fit(lengths, L)
    assert sorted(i for p in nf for i in p) == list(range(len(lengths)))
    assert len(nf) > 1.1 * len(packs)                              # the original's packing is far worse


def test_sort_groups_and_deal_steps():
    lengths = np.random.default_rng(0).integers(1, 1000, 103)
    groups = packing.sort_groups(lengths, 8, seed=5)
    assert sorted(i for g in groups for i in g) == list(range(103))
    assert [len(g) for g in groups] == [8] * 12 + [7]
    runs = sorted(groups[:-1], key=lambda g: lengths[g].min())
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(runs, runs[1:], strict=False))
    assert groups[:-1] != runs                                     # shuffled
    assert groups == packing.sort_groups(lengths, 8, seed=5) != packing.sort_groups(lengths, 8, seed=6)
    costs = np.random.default_rng(1).random(50)
    for balance in (False, True):
        steps = packing.deal_steps(costs, 8, 0, balance)
        assert sorted(i for s in steps for i in s) == list(range(50)) and len(steps[-1]) == 2
    # idle fraction against the definition, step by step
    steps = [[0, 1], [2]]
    expected = 1 - costs[:3].sum() / (2 * max(costs[0], costs[1]) + 2 * costs[2])
    assert packing.idle_fraction(costs, steps, 2) == pytest.approx(expected, rel=1e-12)


def test_balance_evens_the_step_cost():
    lengths = packing.longalign_shaped_lengths(65536, num_long=2000, num_short=6000, seed=0)
    packs = packing.best_fit_decreasing(lengths, 65536)
    costs = packing.pack_costs(lengths, packs)
    assert costs == pytest.approx([sum(lengths[i] + lengths[i] ** 2 / packing.ATTENTION_LENGTH for i in p)
                                   for p in packs])
    balanced = packing.idle_fraction(costs, packing.deal_steps(costs, 8, 0, True), 8)
    unbalanced = packing.idle_fraction(costs, packing.deal_steps(costs, 8, 0, False), 8)
    assert balanced <= 0.03 and unbalanced > 3 * balanced


def test_cost_constants_and_target_term():
    l0, r = packing.cost_constants(6_738_415_616, 32_000, 4096, 32)   # Llama-2-7B: the defaults
    assert round(l0, -2) == packing.ATTENTION_LENGTH and round(r, 3) == packing.TARGET_COST
    tied = packing.cost_constants(1000 + 10 * 4, 10, 4, 2, tied_embeddings=True)
    assert tied == (1000 / 8, 40 / 1000)
    lengths, targets = np.array([100, 300, 50]), np.array([10, 0, 50])
    # by hand: 100 + 100^2/1000 + 0.5*10, 50 + 50^2/1000 + 0.5*50; 300 + 300^2/1000
    assert packing.pack_costs(lengths, [[0, 2], [1]], targets, l0=1000, r=0.5) == pytest.approx(
        [115 + 77.5, 390], rel=1e-12)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, tokenizer_dir, chat_data_dir):
    out = tmp_path_factory.mktemp("store")
    pre_tokenize.main(["--model", str(tokenizer_dir), "--long_file", str(chat_data_dir / "raw" / "long.jsonl"),
                       "--short_file", str(chat_data_dir / "raw" / "sharegpt.jsonl"), "--datanum", "all",
                       "--max_length", "4096", "--out_dir", str(out)])
    return out


def test_script_plans(store_dir):
    from longalign.store import TokenizedStore

    stats = sort_and_group.main(["--train_file", str(store_dir), "--group_size", "4", "--max_length", "8192",
                                 "--balance"])
    store = TokenizedStore(store_dir)
    n, lengths = len(store), store.lengths
    sort = packing.read_sort_plan(store_dir)
    assert (sort["group_size"], sort["max_length"]) == (4, 8192)
    assert sorted(i for g in sort["groups"] for i in g) == list(range(n))
    assert all(len(g) == 4 for g in sort["groups"][:-1]) and 1 <= len(sort["groups"][-1]) <= 4
    plan = packing.read_pack_plan(store_dir)
    assert plan["balance"] and plan["group_size"] == 4
    assert sorted(i for p in plan["packs"] for i in p) == list(range(n))
    assert sorted(i for s in plan["steps"] for i in s) == list(range(len(plan["packs"])))
    assert all(len(s) == 4 for s in plan["steps"][:-1])
    for p, seqs in enumerate(plan["packs"]):
        assert lengths[seqs].sum() <= 8192
        assert plan["pack_of"][seqs].tolist() == [p] * len(seqs)
        assert plan["offset"][seqs].tolist() == np.concatenate([[0], np.cumsum(lengths[seqs])[:-1]]).tolist()
    assert stats["num_packs"] == len(plan["packs"]) <= stats["lower_bound_packs"] + 1
    assert stats["lower_bound_packs"] == math.ceil(lengths.sum() / 8192)
    assert stats["num_tokens"] == lengths.sum() and stats["fill"] > stats["next_fit"]["fill"]
    assert store.disk_bytes() / stats["num_tokens"] <= 2.5
    first = {f: (store_dir / f).read_bytes() for f in (packing.SORT_PLAN, packing.PACK_PLAN)}
    sort_and_group.main(["--train_file", str(store_dir), "--group_size", "4", "--max_length", "8192", "--balance"])
    assert first == {f: (store_dir / f).read_bytes() for f in first}  # deterministic under a seed
    sort_and_group.main(["--train_file", str(store_dir), "--group_size", "4", "--max_length", "8192",
                         "--seed", "7"])
    assert first[packing.SORT_PLAN] != (store_dir / packing.SORT_PLAN).read_bytes()
    pre_tokenize.main(["--model", str(store.meta["tokenizer"]), "--long_file", "", "--datanum", "0k",
                       "--short_file", store.meta["sources"]["short"]["file"], "--out_dir", str(store_dir)])
    assert not (store_dir / packing.PACK_PLAN).exists()  # a new store never keeps the old store's plans


def test_sequence_longer_than_L_is_a_clear_error(store_dir, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        sort_and_group.main(["--train_file", str(store_dir), "--max_length", "512"])
    assert e.value.code == 2
    assert "re-run pre_tokenize.py with --max_length 512" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sort_and_group.main(["--train_file", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="sort_and_group.py"):
        packing.read_pack_plan(tmp_path)
