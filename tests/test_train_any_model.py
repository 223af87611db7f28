"""train.py on families without a model file of ours (tiny random Qwen3, and Gemma-3 with sliding layers, tied
embeddings, through longalign/any_model.py): pack + --pack_loss gives the same SGD step as the brute-force
per-sequence reference (the family's own transformers class, one sequence at a time, Eq. 2), in one process and, for
Qwen3, in two under DeepSpeed ZeRO-3; two steps train, and the saved folder loads in stock transformers as the
family's class with the logits of our packed forward."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
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
from longalign.models import load_model
from tools import synthetic


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, tokenizer):
    return synthetic.build_tiny_model(tmp_path_factory.mktemp("qwen3"), tokenizer, "qwen3")


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory, tokenizer):  # sliding layers with a window shorter than most sequences
    return synthetic.build_tiny_model(tmp_path_factory.mktemp("gemma3"), tokenizer, "gemma3_text", sliding_window=64,
                     layer_types=["sliding_attention", "full_attention"])


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tokenizer_dir):
    """The same store with pack plans for K = 1 (one process) and K = 2 (two)."""
    root = tmp_path_factory.mktemp("train_qwen3")
    plain = make_store(root, tokenizer_dir, num_long=2, num_short=8, long_min_words=30, max_length=1024)
    return {K: with_plan(plain, root / f"k{K}", K=K, max_length=1024) for K in (1, 2)}


@pytest.fixture(scope="module")
def store(stores):
    return stores[1]


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_pack_loss_step_equals_the_per_sequence_reference(tmp_path, request, store, family):
    model_dir = request.getfixturevalue(f"{family}_dir")
    out = tmp_path / "one_step"
    result = train.main(train_argv(model_dir, store, out, *SGD, "--batch_method", "pack", "--pack_loss",
                                   "--max_length", 1024, "--gradient_accumulation_steps", 64))
    assert result["global_step"] == 1  # the whole store is one optimizer step
    d = delta(weights(out), weights(model_dir))
    reference = reference_sgd_delta(model_dir, store)
    reference.pop("lm_head.weight", None)  # tied: saved once, as model.embed_tokens.weight
    assert rel(d, reference, f"{family} (any_model), SGD step, pack + --pack_loss vs per-sequence reference") <= 1e-4


@pytest.mark.parametrize("family,cls", [("qwen3", "Qwen3ForCausalLM"), ("gemma3", "Gemma3ForCausalLM")])
def test_two_steps_then_the_folder_loads_in_stock_transformers(tmp_path, request, store, family, cls):
    model_dir = request.getfixturevalue(f"{family}_dir")
    out = tmp_path / "two_steps"
    result = train.main(train_argv(model_dir, store, out, "--batch_method", "pack", "--pack_loss", "--max_length",
                                   1024, "--max_steps", 2, "--learning_rate", "1e-3"))
    assert result["global_step"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [cls] and "longalign" not in json.dumps(config)
    stock = getattr(transformers, cls).from_pretrained(out, dtype=torch.float32).eval()
    assert type(stock) is getattr(transformers, cls)
    ours = load_model(out, dtype=torch.float32).eval()
    x = torch.randint(3, 1000, (1, 100))  # longer than gemma3's window of 64
    with torch.no_grad():
        a = stock(x).logits
        b = ours(x, cu_seqlens=torch.tensor([0, 100], dtype=torch.int32)).logits
    diff = float((a - b).abs().max())
    print(f"\n[figure] {family} trained 2 steps, reloaded as stock {cls}: logits max|diff| {diff:.1e}")
    assert diff <= 1e-5
    assert float(delta(weights(out), weights(model_dir))["model.norm.weight"].abs().max()) > 0  # it trained


def test_two_process_zero3_step_equals_the_reference(tmp_path, qwen3_dir, stores):
    """ZeRO-3 partitions the wrapped Qwen3 (tied output layer included) over 2 processes: one SGD step over the
    whole store, 1 pack per rank per micro-step, equals the per-sequence reference."""
    pytest.importorskip("deepspeed")
    from test_train_deepspeed import ROOT, cpu_zero3_config, free_port

    store = stores[2]
    out = tmp_path / "zero3"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "train.py",
           *train_argv(qwen3_dir, store, out, *SGD, "--batch_method", "pack", "--pack_loss", "--max_length", 1024,
                       "--gradient_accumulation_steps", 64, "--deepspeed", cpu_zero3_config(tmp_path / "z3.json"))]
    run = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    reference = reference_sgd_delta(qwen3_dir, store)
    reference.pop("lm_head.weight", None)  # tied: saved once, as model.embed_tokens.weight
    d = delta(weights(out), weights(qwen3_dir))
    assert rel(d, reference, "qwen3 (any_model), 2 processes ZeRO-3, pack + --pack_loss vs per-sequence reference") <= 1e-4
