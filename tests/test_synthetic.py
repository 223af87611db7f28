"""The offline fixtures themselves: tokenizer round trip, tiny model runs, generator's promises."""

import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longalign import synthetic


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_tokenizer_trains_fast_and_round_trips(tmp_path):
    t0 = time.perf_counter()
    synthetic.train_tokenizer(tmp_path / "tok")
    assert time.perf_counter() - t0 < 1.0  # "well under a second" (includes save + reload)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 1024
    for text in ["The secret code of Brai is 4821.", "héllo wörld ☃ 你好\n\ttabs", "  spaces  "]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # digits are single tokens, so copying a code is a token-by-token task
    assert len(tok("4821", add_special_tokens=False)["input_ids"]) == 4
    assert tok.eos_token == "</s>" and tok.pad_token_id != tok.eos_token_id


def test_chat_template_marks_assistant_tokens(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello there."}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(ids) == "Hello there." + tokenizer.eos_token


def test_tiny_llama_loads_and_runs(tiny_llama_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA is exercised
    ids = tokenizer("The secret code of Brai is", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(1024.0)).item()) < 0.5
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3


def test_generator_writes_the_promised_mix(chat_data_dir, tokenizer):
    long_rows = read_jsonl(chat_data_dir / "raw" / "long.jsonl")
    short_rows = read_jsonl(chat_data_dir / "raw" / "sharegpt.jsonl")
    assert len(long_rows) == 24 and len(short_rows) == 120
    for row in long_rows + short_rows:
        roles = [m["role"] for m in row["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) >= 2
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])

    def n_tokens(row):
        return sum(len(tokenizer(m["content"])["input_ids"]) for m in row["messages"])

    long_len = sorted(n_tokens(r) for r in long_rows)
    short_len = sorted(n_tokens(r) for r in short_rows)
    # long conversations span close to the promised 8x range and are long-tailed (median near the short end)
    assert long_len[-1] / long_len[0] > 4
    assert long_len[len(long_len) // 2] < (long_len[0] + long_len[-1]) / 2
    # the shortest long conversation is longer than 90 % of the short ones (ShareGPT has a tail too)
    assert long_len[0] > short_len[int(0.9 * len(short_len))]
    assert any(len(r["messages"]) > 2 for r in short_rows)  # multi-turn
    assert any(r["messages"][0]["role"] == "system" for r in short_rows)


def test_long_conversation_answer_is_in_the_document():
    import random

    rng, lex = random.Random(3), synthetic.Lexicon(0)
    for _ in range(20):
        row = synthetic.long_conversation(rng, lex, 300)
        document = row["messages"][0]["content"]
        for answer in row["messages"][1::2]:
            assert answer["content"].rstrip(".") in document


def test_cli_writes_everything(tmp_path):
    synthetic.main(["--out", str(tmp_path), "--num_long", "4", "--long_min_words", "50", "--num_short", "5"])
    assert len(read_jsonl(tmp_path / "raw" / "long.jsonl")) == 4
    assert (tmp_path / "tiny-llama" / "config.json").exists()
    assert sorted(p.name for p in (tmp_path / "haystack").glob("*.txt"))
