"""The offline fixtures themselves: tokenizer round trip, tiny model runs, generator's promises."""

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tools import synthetic

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_tokenizer_trains_fast_and_round_trips(tmp_path):
    t0 = time.perf_counter()
    synthetic.train_tokenizer(tmp_path / "tok")
    # "well under a second" on a quiet machine (includes save + reload); the bound only catches a hang or a
    # pathological slowdown, so a loaded or older CPU must not fail it
    assert time.perf_counter() - t0 < 10.0
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


# ---------------------------------------------------------------------------------------------
# tools/demo_data.py: the quickstart's real-English data for the real model

def test_stdlib_prose_is_real_english_and_train_and_eval_share_nothing():
    from tools import demo_data

    train = demo_data.stdlib_paragraphs(demo_data.TRAIN_MODULES)
    held_out = demo_data.held_out_paragraphs()
    assert len(train) > 500 and len(held_out) > 200
    assert not set(train) & set(held_out)
    for p in train + held_out:
        assert p[0].isupper() and p.endswith(".") and "\n" not in p and ">>>" not in p
    # the quickstart's needle test needs 2,000 tokens of haystack (~1,500 words) from the held-out part
    assert sum(len(p.split()) for p in held_out) > 8000
    assert not demo_data.is_prose("Example:\n    x = f(1)") and not demo_data.is_prose("short one.")


def _statements(text, family):
    """(subject, value) of every statement of `family` in text."""
    import re

    from tools import demo_data

    pattern = re.escape(demo_data.FAMILIES[family][0]).replace(r"\{s\}", r"(\w+)").replace(r"\{v\}", r"([\w ]+?)")
    return re.findall(pattern, text)


def test_demo_chats_answer_from_the_document_among_look_alikes():
    import random

    from tools import demo_data

    rng, paragraphs = random.Random(5), demo_data.stdlib_paragraphs(demo_data.TRAIN_MODULES)
    kinds = set()
    for _ in range(60):
        messages = demo_data.train_conversation(rng, paragraphs, rng.randint(100, 400))["messages"]
        document = messages[0]["content"]
        for answer in messages[1::2]:
            for sentence in answer["content"].split(". "):
                fact = sentence.rstrip(".") + "."
                assert document.count(fact) == 1  # the answer is in the document, once
                family = next(f for f in demo_data.FAMILIES if _statements(fact, f))
                (subject, value), = _statements(fact, family)
                found = _statements(document, family)
                assert len(found) >= 2 and [s for s, _ in found].count(subject) == 1  # look-alikes, one per subject
                assert family in demo_data.TRAIN_FAMILIES  # held-out shapes never appear in training
        for family in (demo_data.NEEDLE_FAMILY, *demo_data.LBC_FAMILIES):
            assert not _statements(document, family)
        kinds.add((len(messages), ". " in messages[1]["content"]))
    assert kinds == {(2, False), (2, True), (4, False), (4, True)}  # one fact, two facts, follow-up rounds


def test_needle_haystack_and_lbc_cases(tmp_path):
    import yaml

    from tools import demo_data

    needle, question, key = demo_data.needle()
    config = yaml.safe_load((ROOT / "Needle_test" / "config-quickstart-prompt.yaml").read_text())
    assert (config["needle"], config["retrieval_question"]) == (needle, question) and key in needle
    text = (demo_data.write_haystack(tmp_path) / "stdlib_docs.txt").read_text()
    look_alikes = _statements(text, demo_data.NEEDLE_FAMILY)
    assert len(look_alikes) >= 45  # one per ~120 of 6,000 words: the needle's shape is everywhere
    assert all(s != demo_data.NEEDLE_SUBJECT and v != demo_data.NEEDLE_VALUE for s, v in look_alikes)

    cases, shots = demo_data.lbc_cases(8, min_words=200)
    for case, (good, half, bad) in zip(cases, shots, strict=True):
        assert case["prompt"].endswith(case["query"]) and good == {"answer": case["answer"], "score": 10}
        facts = [s.rstrip(".") + "." for s in case["answer"].split(". ")]
        assert len(facts) == 2 and all(case["prompt"].count(f) == 1 for f in facts)
        assert half["answer"].startswith(facts[0]) and half["answer"] != case["answer"]
        assert not any(f in bad["answer"] for f in facts) and (half["score"], bad["score"]) == (5, 2)

