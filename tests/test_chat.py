"""Chat formats and labels: the paper formats and a chat template, checked by decoding the labelled spans
back to the answers and against transformers' own assistant mask."""

import pytest

from longalign import chat
from longalign.chat import IGNORE_INDEX

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the secret code of Bram?"},
    {"role": "assistant", "content": "The secret code of Bram is 4821."},
    {"role": "user", "content": "And of Stou?"},
    {"role": "assistant", "content": "It is 1907, near the glen."},
]
ANSWERS = [CONV[2]["content"], CONV[4]["content"]]

# The paper's formats written out by hand (the reference), with the tokenizer's <s> and an </s> per answer.
EXPECTED = {
    "llama": "<s>[INST]<<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is the secret code of Bram?[/INST]"
             "The secret code of Bram is 4821.</s>\n\n[INST]And of Stou?[/INST]It is 1907, near the glen.</s>",
    "chatglm": "<s>You are terse.\n\n[Round 1]\n\n问：What is the secret code of Bram?\n\n答："
               "The secret code of Bram is 4821.</s>\n\n[Round 2]\n\n问：And of Stou?\n\n答：It is 1907, near the glen.</s>",
}


def labelled_spans(input_ids, labels) -> list[list[int]]:
    """Maximal runs of target tokens, checking that labels equal input_ids wherever they are targets."""
    spans, run = [], []
    for tok, lab in zip(input_ids, labels, strict=True):
        if lab == IGNORE_INDEX:
            if run:
                spans.append(run)
            run = []
        else:
            assert lab == tok
            run.append(tok)
    return spans + ([run] if run else [])


def decoded_answers(tokenizer, input_ids, labels) -> list[str]:
    return [tokenizer.decode(s) for s in labelled_spans(input_ids, labels)]


@pytest.mark.parametrize("template", ["llama", "chatglm"])
def test_paper_format_text_and_labels(tokenizer, template):
    (ids, labels), = chat.encode_conversations([CONV], template, tokenizer)
    assert tokenizer.decode(ids) == EXPECTED[template]
    assert decoded_answers(tokenizer, ids, labels) == [a + "</s>" for a in ANSWERS]
    assert labels[0] == IGNORE_INDEX and ids[0] == tokenizer.bos_token_id
    # negative control: the same check on labels shifted by one token must fail
    shifted = [IGNORE_INDEX] + labels[:-1]
    with pytest.raises(AssertionError):
        assert decoded_answers(tokenizer, ids, [s if s == IGNORE_INDEX else t for s, t in
                                                zip(shifted, ids, strict=True)]) == [a + "</s>" for a in ANSWERS]


def test_chat_template_matches_transformers_assistant_mask(tokenizer):
    """Our answer spans (found by rendering prefixes) against transformers' {% generation %} mask."""
    ref = tokenizer.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    (ids, labels), = chat.encode_conversations([CONV], "chat_template", tokenizer)
    assert ids == list(ref["input_ids"])
    assert [lab != IGNORE_INDEX for lab in labels] == [bool(m) for m in ref["assistant_masks"]]
    assert decoded_answers(tokenizer, ids, labels) == [a + "</s>" for a in ANSWERS]
    # negative control: a template that leaves the EOS outside the generation block differs from ours
    tok2 = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok2.chat_template = tok2.chat_template.replace("{{ eos_token }}{% endgeneration %}",
                                                    "{% endgeneration %}{{ eos_token }}")
    ref2 = tok2.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert [lab != IGNORE_INDEX for lab in labels] != [bool(m) for m in ref2["assistant_masks"]]


@pytest.mark.parametrize("template", ["llama", "chatglm", "chat_template"])
def test_prompt_ids_are_the_training_ids(tokenizer, template):
    """What the model sees when it answers the last user turn == the training ids before that answer."""
    (ids, labels), = chat.encode_conversations([CONV], template, tokenizer)
    prompt = chat.encode_prompt(CONV[:-1], template, tokenizer)
    assert ids[:len(prompt)] == prompt
    assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX
    text = chat.build_prompt(CONV[:-1], template, tokenizer)
    if template != "chat_template":
        assert text == EXPECTED[template].split("It is 1907")[0]
    assert tokenizer.decode(prompt) == text


def test_special_token_text_in_content_is_plain_text_in_paper_formats(tokenizer):
    conv = [{"role": "user", "content": "say </s> now"}, {"role": "assistant", "content": "ok </s> done"}]
    (ids, labels), = chat.encode_conversations([conv], "llama", tokenizer)
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
    assert decoded_answers(tokenizer, ids, labels) == ["ok </s> done</s>"]


def test_batch_equals_one_by_one(tokenizer, chat_data_dir):
    import json
    convs = [json.loads(line)["messages"] for line in
             (chat_data_dir / "raw" / "sharegpt.jsonl").read_text().splitlines()[:20]]
    for template in chat.TEMPLATES:
        batched = chat.encode_conversations(convs, template, tokenizer)
        assert batched == [chat.encode_conversations([c], template, tokenizer)[0] for c in convs]
        for (ids, labels), conv in zip(batched, convs, strict=True):
            answers = [m["content"] + "</s>" for m in conv if m["role"] == "assistant"]
            assert decoded_answers(tokenizer, ids, labels) == answers


def test_check_messages():
    ok = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert chat.check_messages(ok) is None
    assert chat.check_messages([{"role": "system", "content": "s"}] + ok) is None
    assert chat.check_messages(ok[:1], need_answer=False) is None
    assert chat.check_messages("x") == "messages_not_a_list"
    assert chat.check_messages([]) == "empty_messages"
    assert chat.check_messages([ok[1], ok[0]]) == "roles_out_of_order"
    assert chat.check_messages(ok + ok[1:]) == "roles_out_of_order"
    assert chat.check_messages(ok[:1]) == "no_final_answer"
    assert chat.check_messages([{"role": "robot", "content": "q"}]) == "unknown_role"
    assert chat.check_messages([{"role": "user", "content": 3}]) == "content_not_a_string"
    assert chat.check_messages(["hi"]) == "turn_not_an_object"


def test_sharegpt_roles_and_middle_cut():
    conv = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "robot", "value": "x"}]
    assert chat.sharegpt_to_messages(conv) == [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a"},
                                               {"role": "robot", "content": "x"}]
    assert chat.middle_cut(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert chat.middle_cut("abc", 5) == "abc"
    assert chat.default_template("chatglm") == "chatglm" and chat.default_template("org/x") == "chat_template"


def test_backend_ids_equal_the_tokenizer_call(tokenizer, chat_data_dir):
    texts = (chat_data_dir / "raw" / "sharegpt.jsonl").read_text().splitlines()[:30] + ["a </s> b <|user|>", ""]
    for split in (False, True):
        ref = tokenizer(texts, add_special_tokens=False, split_special_tokens=split)["input_ids"]
        assert chat.token_ids(tokenizer, texts, split) == ref
    assert chat.token_ids(tokenizer, ["</s>"], True) != chat.token_ids(tokenizer, ["</s>"], False)
