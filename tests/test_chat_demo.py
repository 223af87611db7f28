"""scripts/chat_demo.py: a long document and a question in, the answer streamed to stdout; ChatGLM
models through their model.chat, others through their chat template."""

from pathlib import Path

import pytest
import script_module

from longalign.scriptargs import run_main

ROOT = Path(__file__).resolve().parents[1]
demo = script_module.load("scripts/chat_demo.py", "chat_demo")


@pytest.fixture()
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("The quick report. " * 300)
    return path


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_qwen3_dir", "tiny_gemma3_dir"])  # ours; any_model.py's
def test_streams_the_answer_with_the_chat_template(model, request, doc, capsys):
    answers = demo.main(["--model", str(request.getfixturevalue(model)), "--file", str(doc), "--question",
                         "What is it?", "--max_new_tokens", "6", "--max_length", "200"])
    out, err = capsys.readouterr()
    assert len(answers) == 1 and answers[0] and answers[0] in out  # streamed text = returned answer
    assert "middle cut to 200" in err and "template chat_template" in err


def test_several_turns_on_a_thinking_template(tiny_qwen3_dir, doc, capsys, monkeypatch):
    """Questions on stdin: the second prompt holds the first answer as the template writes history (no think
    block), and ends with the empty think block of a non-thinking answer (the Qwen3-style template of the
    fixture); the prompts are the ones training reads before each answer."""
    from longalign import chat
    from longalign.generation import Generator

    seen, original = [], Generator.generate
    monkeypatch.setattr(Generator, "generate", lambda self, messages, **kw: seen.append(
        chat.encode_prompt(messages, "chat_template", self.tokenizer)) or original(self, messages, **kw))
    typed = iter(["What is it?", "And then?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt: next(typed))
    answers = demo.main(["--model", str(tiny_qwen3_dir), "--file", str(doc), "--max_new_tokens", "4",
                         "--max_length", "50"])
    out = capsys.readouterr().out
    assert len(answers) == 2 and all(a in out for a in answers)
    tok = Generator(str(tiny_qwen3_dir), "auto").tokenizer
    second = tok.decode(seen[1])
    assert second.endswith("And then?</s>\n<|assistant|>\n<think></think>\n")
    assert f"<|assistant|>\n{answers[0]}</s>" in second  # the first answer as history, no think block


def test_chatglm_answers_through_model_chat(tokenizer, doc, tmp_path, capsys, monkeypatch):
    import torch

    from modeling_chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration

    config = ChatGLMConfig(num_layers=1, padded_vocab_size=len(tokenizer), hidden_size=32, ffn_hidden_size=48,
                           kv_channels=8, num_attention_heads=4, multi_query_attention=True,
                           multi_query_group_num=2, add_qkv_bias=True, seq_length=512)
    torch.manual_seed(0)
    ChatGLMForConditionalGeneration(config).save_pretrained(tmp_path / "glm")
    tokenizer.save_pretrained(tmp_path / "glm")
    calls, original = [], ChatGLMForConditionalGeneration.chat

    def spy(self, tokenizer, query, history=None, template="chatglm", **kwargs):
        calls.append(template)
        return original(self, tokenizer, query, history, template, **kwargs)

    monkeypatch.setattr(ChatGLMForConditionalGeneration, "chat", spy)
    answers = demo.main(["--model", str(tmp_path / "glm"), "--file", str(doc), "--question", "What?",
                         "--template", "chatglm", "--max_new_tokens", "5", "--max_length", "100"])
    assert calls == ["chatglm"] and answers[0] in capsys.readouterr().out


@pytest.fixture(scope="module")
def glm_checkpoint(tmp_path_factory):
    """A tiny random ChatGLM3-format checkpoint whose tokenizer files are ChatGLM3's kind: tokenizer.model and
    a tokenizer_config.json asking for THUDM's remote code (longalign.tokenization builds it without)."""
    import spm_fixtures as fx
    import torch

    from longalign.tokenization import load_tokenizer
    from modeling_chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration

    folder = tmp_path_factory.mktemp("glm3")
    fx.chatglm_checkpoint(folder, fx.train_sentencepiece(folder / "spm" / "tokenizer.model", vocab_size=1000))
    config = ChatGLMConfig(num_layers=1, padded_vocab_size=len(load_tokenizer(str(folder))), hidden_size=32,
                           ffn_hidden_size=48, kv_channels=8, num_attention_heads=4, multi_query_attention=True,
                           multi_query_group_num=2, add_qkv_bias=True, seq_length=512)
    torch.manual_seed(0)
    ChatGLMForConditionalGeneration(config).save_pretrained(folder)
    return folder


def test_chat_prompt_ids_are_the_training_ids(glm_checkpoint, doc, monkeypatch):
    """model.chat (and so the demo) reads exactly the ids training stores before the answer: [gMASK] sop as
    the two special ids, every earlier answer ending with EOS. The old way, the prompt's text tokenized in
    one call, differs (negative control)."""
    from longalign import chat
    from longalign.tokenization import load_tokenizer
    from modeling_chatglm import ChatGLMForConditionalGeneration

    tok = load_tokenizer(str(glm_checkpoint))
    model = ChatGLMForConditionalGeneration.from_pretrained(glm_checkpoint).eval()
    seen, generate = [], ChatGLMForConditionalGeneration.generate

    def spy(self, input_ids=None, **kwargs):
        seen.append(input_ids[0].tolist())
        return generate(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(ChatGLMForConditionalGeneration, "generate", spy)
    history = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "What is  the code?"},
               {"role": "assistant", "content": " It is 4821."}]
    response, new_history = model.chat(tok, "和 Stou 的？", history=history, max_new_tokens=3, do_sample=False)
    (train_ids, labels), = chat.encode_conversations([history + [{"role": "user", "content": "和 Stou 的？"},
                                                                 {"role": "assistant", "content": "答案"}]],
                                                     "chatglm", tok)
    last_answer = max(k for k in range(1, len(labels))
                      if labels[k - 1] == chat.IGNORE_INDEX and labels[k] != chat.IGNORE_INDEX)
    assert seen[0] == train_ids[:last_answer]  # the training context of the last answer
    assert seen[0][:2] == [tok.convert_tokens_to_ids("[gMASK]"), tok.convert_tokens_to_ids("sop")]
    assert seen[0].count(tok.eos_token_id) == 1 and new_history[-1]["content"] == response
    one_call = tok(chat.build_prompt(history + [{"role": "user", "content": "和 Stou 的？"}], "chatglm", tok),
                   add_special_tokens=False)["input_ids"]
    assert one_call != seen[0] and tok.convert_tokens_to_ids("sop") not in one_call

    # the demo on the same checkpoint (no --trust_remote_code) goes through the same chat()
    seen.clear()
    demo.main(["--model", str(glm_checkpoint), "--file", str(doc), "--question", "What?", "--template", "chatglm",
               "--max_new_tokens", "2", "--max_length", "40"])
    document = demo.truncate_text_middle(doc.read_text(), tok, 40)[0]
    assert seen == [chat.encode_prompt([{"role": "user", "content": f"{document}\n\nWhat?"}], "chatglm", tok)]


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(demo.main, ["--model", "x", "--file", str(tmp_path / "nope.txt")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
