"""Generator.generate_batch: in-process greedy answers for several conversations as one left-padded batch equal
one-at-a-time answers, token for token, on a tiny random Llama and on the real SmolLM2-135M-Instruct (our model
file, its chat template). Control: the same batch with the padding attended gives other answers, so the
comparison sees what a wrong mask would do. Sampling and servers keep one call per conversation."""

import pytest
import torch

from longalign.generation import Generator

QUESTIONS = ["What is the port of the ledger server?",
             "Read this: the mirror client waits 45 seconds before it gives up. How long does it wait?",
             "Hi",
             "Name three colours, then count from one to five, then say goodbye politely to the user."]


def conversations():
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def one_at_a_time(gen: Generator, max_new_tokens: int) -> list[str]:
    return [gen.generate(c, max_new_tokens=max_new_tokens, temperature=0)["text"] for c in conversations()]


def test_any_model_family_answers_as_the_stock_model(tiny_qwen3_dir):
    """Generation on a family served by longalign/any_model.py (Qwen3): the same greedy answers as stock
    transformers' Qwen3ForCausalLM on the same ids, one at a time and batched."""
    import transformers

    gen = Generator(str(tiny_qwen3_dir), template="auto", max_new_tokens=12, temperature=0)
    assert type(gen.model).__module__ != transformers.Qwen3ForCausalLM.__module__  # ours, not the stock class
    stock = transformers.Qwen3ForCausalLM.from_pretrained(tiny_qwen3_dir).eval()
    gen_stock = Generator.__new__(Generator)
    gen_stock.__dict__.update(gen.__dict__ | {"model": stock})
    expected = one_at_a_time(gen_stock, 12)
    assert one_at_a_time(gen, 12) == expected
    assert [g["text"] for g in gen.generate_batch(conversations())] == expected


@pytest.mark.parametrize("model", ["tiny_llama_dir", "smollm2_dir"])
def test_batch_equals_one_at_a_time(model, request):
    gen = Generator(str(request.getfixturevalue(model)), template="auto", max_new_tokens=12, temperature=0)
    expected = one_at_a_time(gen, 12)
    got = gen.generate_batch(conversations())
    assert [g["text"] for g in got] == expected
    lengths = [g["prompt_tokens"] for g in got]
    assert len(set(lengths)) == len(lengths), lengths  # the rows really were padded to different extents
    print(f"[figure] {model}: {len(got)} greedy answers of <= 12 tokens, batched == one at a time; "
          f"prompts of {min(lengths)}-{max(lengths)} tokens")

    # control: the same left-padded batch with the padding attended answers differently
    calls = []
    real = gen.model.generate

    def attend_padding(**kwargs):
        calls.append(1)
        return real(**(kwargs | {"attention_mask": torch.ones_like(kwargs["attention_mask"])}))

    gen.model.generate = attend_padding
    wrong = [g["text"] for g in gen.generate_batch(conversations())]
    assert calls and wrong != expected


def test_sampling_stays_one_call_per_conversation(tiny_llama_dir, monkeypatch):
    gen = Generator(str(tiny_llama_dir), template="auto", max_new_tokens=4, temperature=0.7)
    calls = []
    real = Generator.generate
    monkeypatch.setattr(Generator, "generate", lambda self, m, **kw: calls.append(m) or real(self, m, **kw))
    out = gen.generate_batch(conversations())
    assert len(calls) == len(QUESTIONS) and len(out) == len(QUESTIONS)
