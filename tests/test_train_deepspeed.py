"""DeepSpeed ZeRO-3 really runs on the CPU: 2 processes (torchrun, gloo) x accumulation 2 end with the weights
of 1 process x accumulation 4 (the same 4 sequences in every optimizer step), and write a consolidated model.

The first DeepSpeed run in an environment JIT-compiles its CPU ops (1-2 minutes; scripts/test.sh does it before
pytest, into .venv/torch_extensions).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import (
    delta,
    make_store,
    one_thread,  # noqa: F401  (autouse fixture)
    rel,
    train_argv,
    weights,
)

import train

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_zero3_config(path: Path, name: str = "stage3.json") -> Path:
    """ds_config/<name> with the CPU-test settings: no prefetch (a rank sometimes aborts
    at exit with it on CPU), every parameter partitioned however small. Nothing else changes: bf16/fp16 stay
    "auto" (DeepSpeed 0.19.8 runs both on the CPU, tests/test_paper_config.py), offload stays on."""
    config = json.loads((ROOT / "ds_config" / name).read_text())
    config["zero_optimization"].update(stage3_prefetch_bucket_size=0, stage3_param_persistence_threshold=0)
    path.write_text(json.dumps(config))
    return path


def argv(model_dir, store, out, accumulation):
    return train_argv(model_dir, store, out, "--batch_method", "naive", "--per_device_train_batch_size", 1,
                      "--gradient_accumulation_steps", accumulation, "--num_train_epochs", 1,
                      "--learning_rate", "1e-3", "--warmup_steps", 1, "--lr_scheduler_type", "cosine")


def test_two_process_zero3_equals_one_process(tmp_path, tokenizer_dir, tiny_llama_dir):
    store = make_store(tmp_path, tokenizer_dir, num_long=2, num_short=10, long_min_words=40)
    single = tmp_path / "single"
    assert train.main(argv(tiny_llama_dir, store, single, 4))["global_step"] == 3  # 12 sequences, 4 per step

    out = tmp_path / "zero3"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "train.py", *argv(tiny_llama_dir, store, out, 2),
           "--deepspeed", str(cpu_zero3_config(tmp_path / "zero3.json"))]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    # rank 0 logs the step's totals over BOTH ranks and both micro-batches
    lines = [x for x in run.stdout.splitlines() if x.startswith("[train] step ")]
    assert len(lines) == 3 and all(" seqs 4 " in x for x in lines), lines
    # the consolidated ZeRO-3 model: full tensors that from_pretrained loads
    from transformers import LlamaForCausalLM

    w = weights(out)
    assert all(t.numel() > 0 for t in w.values())
    LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    d_zero3, d_single = delta(w, weights(tiny_llama_dir)), delta(weights(single), weights(tiny_llama_dir))
    assert rel(d_zero3, d_single, "2 processes ZeRO-3 x accumulation 2 vs 1 process x accumulation 4 "
               "(3 AdamW steps)") <= 1e-4
