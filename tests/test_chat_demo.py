"""scripts/chat_demo.py: a long document and a question in, the answer streamed to stdout; ChatGLM
models through their model.chat, others through their chat template."""

import importlib.util
from pathlib import Path

import pytest

from longalign.scriptargs import run_main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chat_demo", ROOT / "scripts" / "chat_demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


@pytest.fixture()
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("The quick report. " * 300)
    return path


def test_streams_the_answer_with_the_chat_template(tiny_llama_dir, doc, capsys):
    answers = demo.main(["--model", str(tiny_llama_dir), "--file", str(doc), "--question", "What is it?",
                         "--max_new_tokens", "6", "--max_length", "200"])
    out, err = capsys.readouterr()
    assert len(answers) == 1 and answers[0] and answers[0] in out  # streamed text = returned answer
    assert "middle cut to 200" in err and "template chat_template" in err


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


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(demo.main, ["--model", "x", "--file", str(tmp_path / "nope.txt")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
