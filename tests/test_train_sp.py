"""train.py --sequence_parallel_size 2: one SGD step of 2 processes (torchrun, gloo, DeepSpeed ZeRO-3) that
split every pack between them equals one process on whole packs, and the naive per-sequence reference
(transformers' LlamaForCausalLM, one sequence at a time, Eq. 2); without --pack_loss it does not (Eq. 3).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_deepspeed import cpu_zero3_config, free_port
from train_helpers import (
    SGD,
    delta,
    make_store,
    one_thread,  # noqa: F401  (autouse fixture)
    reference_sgd_delta,
    rel,
    train_argv,
    weights,
    with_plan,
)

import train

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("deepspeed")
L, A = 1024, 2  # pack length; packs per optimizer step (K = 2 ranks / SP 2 = 1 pack per micro-step)
STEP = [*SGD, "--batch_method", "pack", "--max_length", L, "--per_device_train_batch_size", 1,
        "--gradient_accumulation_steps", A, "--max_steps", 1]


def first_step_sequences(store_dir: Path) -> list[int]:
    """The sequence ids of optimizer step 1, from the plan and the schedule train.py builds (K = 1, A = 2)."""
    from longalign import packing
    from longalign.schedule import Schedule
    from longalign.store import TokenizedStore

    store = TokenizedStore(store_dir)
    plan = packing.read_pack_plan(store_dir / packing.PACK_PLAN)
    schedule = Schedule("pack", store.num_target_tokens, store.lengths, world_size=1, per_device=1, accumulation=A,
                        seed=0, reduction="sequence", groups=plan["steps"], packs=plan["packs"])
    return [i for micro in schedule.optimizer_steps(0)[0] for unit in micro for i in unit]


def sp_run(model_dir, store, out, tmp_path, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "train.py",
           *train_argv(model_dir, store, out, *STEP, "--sequence_parallel_size", 2,
                       "--deepspeed", cpu_zero3_config(tmp_path / "zero3.json"), *extra)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("sp_store")
    return with_plan(make_store(root, tokenizer_dir, num_long=2, num_short=8, long_min_words=30, max_length=L),
                     root / "planned", K=1, max_length=L)


def test_sp2_sgd_step_equals_one_process_and_the_naive_reference(tmp_path, store, tiny_llama_dir, capsys):
    ids = first_step_sequences(store)
    assert len(ids) >= 3  # packs of several sequences, so Eq. 3 and Eq. 4 really differ
    before = weights(tiny_llama_dir)

    single = tmp_path / "single"
    train.main(train_argv(tiny_llama_dir, store, single, *STEP, "--pack_loss"))
    capsys.readouterr()
    sp = tmp_path / "sp"
    run = sp_run(tiny_llama_dir, store, sp, tmp_path, "--pack_loss")
    assert "K = 1 (world 2 / SP 2" in run.stdout, run.stdout[-2000:]

    d_sp, d_single = delta(weights(sp), before), delta(weights(single), before)
    d_naive = reference_sgd_delta(tiny_llama_dir, store, ids)
    assert rel(d_sp, d_single, "SP 2 (ZeRO-3) vs 1 process, pack + pack_loss, one SGD step") <= 1e-4
    assert rel(d_sp, d_naive, "SP 2 (ZeRO-3) vs naive per-sequence reference (Eq. 2)") <= 1e-4

    # control: the same split without loss weighting is Eq. 3, not the per-sequence mean
    control = tmp_path / "sp_no_pack_loss"
    sp_run(tiny_llama_dir, store, control, tmp_path)
    assert rel(delta(weights(control), before), d_naive, "control: SP 2 without --pack_loss vs naive") > 1e-2


def test_sp2_on_a_family_served_by_any_model(tmp_path, store, tiny_qwen3_dir, capsys):
    """The same step on a tiny Qwen3 through longalign/any_model.py: its attention modules get the Ulysses
    wrapper, ZeRO-3 partitions it, and the step equals one process and the per-sequence reference."""
    before = weights(tiny_qwen3_dir)
    single = tmp_path / "single"
    train.main(train_argv(tiny_qwen3_dir, store, single, *STEP, "--pack_loss"))
    capsys.readouterr()
    sp = tmp_path / "sp"
    run = sp_run(tiny_qwen3_dir, store, sp, tmp_path, "--pack_loss")
    assert "K = 1 (world 2 / SP 2" in run.stdout, run.stdout[-2000:]
    d_sp, d_single = delta(weights(sp), before), delta(weights(single), before)
    assert rel(d_sp, d_single, "qwen3 (any_model) SP 2 (ZeRO-3) vs 1 process, pack + pack_loss, one SGD step") <= 1e-5
    d_naive = reference_sgd_delta(tiny_qwen3_dir, store, first_step_sequences(store))
    assert rel(d_sp, d_naive, "qwen3 (any_model) SP 2 (ZeRO-3) vs naive per-sequence reference (Eq. 2)") <= 1e-4


def test_sp_size_must_divide_world_and_heads(tmp_path, store, tiny_llama_dir, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(train_argv(tiny_llama_dir, store, tmp_path / "o", *STEP, "--sequence_parallel_size", 2))
    assert e.value.code == 2
    assert "--sequence_parallel_size 2 must divide the world size 1" in capsys.readouterr().err
