"""scripts/chat_demo.py: a long document and a question in, the answer streamed to stdout."""

import importlib.util
from pathlib import Path

import pytest

from longalign.scriptargs import run_main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chat_demo", ROOT / "scripts" / "chat_demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def test_streams_the_answer(tiny_llama_dir, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("The quick report. " * 300)
    answers = demo.main(["--model", str(tiny_llama_dir), "--file", str(doc), "--question", "What is it?",
                         "--template", "none", "--max_new_tokens", "6", "--max_length", "200"])
    out, err = capsys.readouterr()
    assert len(answers) == 1 and answers[0] and answers[0] in out  # streamed text = returned answer
    assert "middle cut to 200" in err and "template none" in err


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(demo.main, ["--model", "x", "--file", str(tmp_path / "nope.txt")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
