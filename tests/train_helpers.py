"""Shared by the train.py tests: a small tokenized store with plans, the command line, and the independent
references (transformers' own LlamaForCausalLM, one sequence at a time)."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tools import synthetic


def make_store(root: Path, tokenizer_dir: Path, num_long=3, num_short=9, long_min_words=60, max_length=2048,
               seed=0) -> Path:
    """raw synthetic chats -> pre_tokenize.py -> a store folder (no plan yet)."""
    import pre_tokenize

    raw = root / "raw"
    synthetic.write_chat_data(raw, num_long=num_long, num_short=num_short, long_min_words=long_min_words, seed=seed)
    store = root / "store"
    pre_tokenize.main(["--model", str(tokenizer_dir), "--template", "chat_template",
                       "--long_file", str(raw / "raw" / "long.jsonl"), "--short_file", str(raw / "raw" / "sharegpt.jsonl"),
                       "--datanum", "all", "--max_length", str(max_length), "--out_dir", str(store)])
    return store


def with_plan(store: Path, dest: Path, K: int, max_length=2048, balance=False) -> Path:
    """A copy of the store with sort and pack plans for K devices per step."""
    import sort_and_group

    shutil.copytree(store, dest)
    sort_and_group.main(["--train_file", str(dest), "--group_size", str(K), "--max_length", str(max_length)]
                        + (["--balance"] if balance else []))
    return dest


def train_argv(model_dir, train_file, output_dir, *extra) -> list[str]:
    """One plain-SGD step's worth of flags (each test adds its method, batch and accumulation)."""
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train_file), "--output_dir", str(output_dir),
            "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
            "--save_strategy", "no", "--seed", "0", "--dataloader_pin_memory", "false", *map(str, extra)]


SGD = ["--optim", "sgd", "--learning_rate", "1.0", "--lr_scheduler_type", "constant", "--max_grad_norm", "0",
       "--weight_decay", "0", "--num_train_epochs", "1"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def delta(after: dict, before: dict) -> dict[str, torch.Tensor]:
    """The change of every parameter, in float64."""
    assert sorted(after) == sorted(before)
    return {k: after[k].double() - before[k].double() for k in before}


def rel(a: dict, b: dict, figure: str | None = None) -> float:
    """||a - b|| / ||b|| over all parameters (both must name the same ones). With `figure`, also print it as
    a "[figure]" line (pytest -s shows them: the README's numbers)."""
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    flat_a = torch.cat([a[k].double().flatten() for k in sorted(b)])
    flat_b = torch.cat([b[k].double().flatten() for k in sorted(b)])
    value = float((flat_a - flat_b).norm() / flat_b.norm())
    if figure:
        print(f"[figure] {figure}: relative difference {value:.1e}")
    return value


def reference_sgd_delta(model_dir: Path, store_dir: Path, ids=None, reduction="sequence") -> dict[str, torch.Tensor]:
    """-grad of Eq. 2 (or the token mean) over the given sequences, with transformers' own class of the model
    (LlamaForCausalLM, Qwen3ForCausalLM, ...) and one sequence per forward: the brute-force reference of one SGD
    step with lr 1."""
    from transformers import AutoModelForCausalLM

    from longalign.store import TokenizedStore

    store = TokenizedStore(store_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = [i for i in (range(len(store)) if ids is None else ids) if store.num_target_tokens[i] > 0]
    total_targets = int(sum(store.num_target_tokens[i] for i in ids))
    model.zero_grad()
    for i in ids:
        item = store[i]
        out = model(input_ids=torch.from_numpy(item["input_ids"])[None], labels=torch.from_numpy(item["labels"])[None])
        scale = 1 / len(ids) if reduction == "sequence" else int(store.num_target_tokens[i]) / total_targets
        (out.loss * scale).backward()  # out.loss = L_i / N_i, HF's mean over the shifted targets
    return {k: -p.grad.double() for k, p in model.named_parameters()}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread while these tests run: on a shared 2-core machine, spinning OpenMP threads of
    concurrent processes slow tiny-model steps down several times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
