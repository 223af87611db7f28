"""train.py on a family without a model file of ours (tiny random Qwen3, tied embeddings, through
longalign/any_model.py): pack + --pack_loss gives the same SGD step as the brute-force per-sequence reference
(transformers' own Qwen3ForCausalLM, one sequence at a time, Eq. 2); two steps train, and the saved folder loads
in stock transformers as Qwen3ForCausalLM with the logits of our packed forward."""

import json

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


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("qwen3")
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("train_qwen3")
    return with_plan(make_store(root, tokenizer_dir, num_long=2, num_short=8, long_min_words=30, max_length=1024),
                     root / "k1", K=1, max_length=1024)


def test_pack_loss_step_equals_the_per_sequence_reference(tmp_path, qwen3_dir, store):
    out = tmp_path / "one_step"
    result = train.main(train_argv(qwen3_dir, store, out, *SGD, "--batch_method", "pack", "--pack_loss",
                                   "--max_length", 1024, "--gradient_accumulation_steps", 64))
    assert result["global_step"] == 1  # the whole store is one optimizer step
    d = delta(weights(out), weights(qwen3_dir))
    reference = reference_sgd_delta(qwen3_dir, store)
    reference.pop("lm_head.weight", None)  # tied: saved once, as model.embed_tokens.weight
    assert rel(d, reference, "qwen3 (any_model), SGD step, pack + --pack_loss vs per-sequence reference") <= 1e-4


def test_two_steps_then_the_folder_loads_in_stock_transformers(tmp_path, qwen3_dir, store):
    out = tmp_path / "two_steps"
    result = train.main(train_argv(qwen3_dir, store, out, "--batch_method", "pack", "--pack_loss", "--max_length",
                                   1024, "--max_steps", 2, "--learning_rate", "1e-3"))
    assert result["global_step"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and "longalign" not in json.dumps(config)
    stock = transformers.Qwen3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(stock) is transformers.Qwen3ForCausalLM
    ours = load_model(out, dtype=torch.float32).eval()
    x = torch.randint(3, 1000, (1, 40))
    with torch.no_grad():
        a = stock(x).logits
        b = ours(x, cu_seqlens=torch.tensor([0, 40], dtype=torch.int32)).logits
    diff = float((a - b).abs().max())
    print(f"\n[figure] qwen3 trained 2 steps, reloaded as stock Qwen3ForCausalLM: logits max|diff| {diff:.1e}")
    assert diff <= 1e-5
    assert float(delta(weights(out), weights(qwen3_dir))["model.norm.weight"].abs().max()) > 0  # it trained
