"""LongBench_Chat/eval.py: middle truncation, template choice, schema errors, and a whole run against a
faulty local judge (right mean, failures counted, a re-run repeats nothing)."""

import json
from pathlib import Path

import pytest
import script_module

from longalign.generation import JsonlTable, choose_template, truncate_text_middle
from longalign.scriptargs import UserError, run_main
from tools import synthetic_eval
from tools.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
lbc = script_module.load("LongBench_Chat/eval.py", "lbc_eval")

# Case i is rated (3i mod 10) + 1. Case 1 meets 429, 500, 500; case 2 never gets a usable rating;
# case 3 a slow reply (a timeout) then an unparsable one. Case 4 and 8 ask in Chinese.
SCORES = {i: (3 * i) % 10 + 1 for i in range(1, 9)}
MARKERS = {i: (s, ()) for i, s in SCORES.items()} | {1: (SCORES[1], ("429", "500", "500")), 2: (None, ()),
                                                      3: (SCORES[3], ("slow", "garbage"))}


def test_middle_truncation_keeps_head_and_tail_halves(tokenizer):
    text = " ".join(f"word{i}." for i in range(400))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for m in (2, 99, 100, len(ids) - 1):
        kept, n_before, truncated = truncate_text_middle(text, tokenizer, m)
        # brute force: the first floor(m/2) tokens and the last m - floor(m/2), decoded
        head, tail = [ids[i] for i in range(m // 2)], [ids[i] for i in range(len(ids) - (m - m // 2), len(ids))]
        assert (kept, n_before, truncated) == (tokenizer.decode(head) + tokenizer.decode(tail), len(ids), True)
    assert "word200." not in truncate_text_middle(text, tokenizer, 100)[0]
    assert truncate_text_middle(text, tokenizer, len(ids)) == (text, len(ids), False)


class _Tok:
    def __init__(self, chat_template):
        self.chat_template = chat_template


def test_template_choice():
    assert choose_template("auto", _Tok("{{ x }}"), "llama")[0] == "chat_template"
    assert choose_template("auto", _Tok(None), "llama")[0] == "llama"
    assert choose_template("auto", _Tok(None), "mistral")[0] == "llama"
    assert choose_template("auto", _Tok(None), "chatglm")[0] == "chatglm"
    assert choose_template("auto", _Tok(None), "gpt2")[0] == "none"
    assert choose_template("llama", _Tok("{{ x }}"), "chatglm") == ("llama", "chosen by --template")
    with pytest.raises(UserError, match="no chat template"):
        choose_template("chat_template", _Tok(None), "llama")


@pytest.fixture()
def data_dir(tmp_path):
    return synthetic_eval.write_cases(tmp_path / "data", 8, min_words=150, markers=MARKERS)


def _fails_with(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        run_main(lbc.main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_schema_errors(data_dir, tmp_path, capsys):
    argv = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out"), "--do_judge", "false"]
    cases = json.loads((data_dir / "test_cases.json").read_text())
    shots = json.loads((data_dir / "few_shots.json").read_text())
    (data_dir / "prompt_fs.txt").write_text("Q {} A {} {} {} {} {} {} {}")  # 8 fields
    _fails_with(capsys, argv, "needs exactly 9 empty {}")
    (data_dir / "prompt_fs.txt").write_text(synthetic_eval.JUDGE_PROMPT)
    (data_dir / "few_shots.json").write_text(json.dumps([s[:2] for s in shots]))
    _fails_with(capsys, argv, "few_shots.json entry 0 must be a list of 3")
    (data_dir / "few_shots.json").write_text(json.dumps(shots))
    del cases[3]["answer"]
    (data_dir / "test_cases.json").write_text(json.dumps(cases))
    _fails_with(capsys, argv, "test_cases.json item 3 lacks answer")
    (data_dir / "test_cases.json").write_text("[{")
    _fails_with(capsys, argv, "is not valid JSON")
    (data_dir / "test_cases.json").unlink()
    _fails_with(capsys, argv, "test_cases.json does not exist")


def test_jsonl_table_drops_partial_lines_and_duplicates(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"idx": 1, "v": "a"}\n{"idx": 2, "v": "b"}\n{"idx": 1, "v": "c"}\n{"idx": 3, "v"')
    table = JsonlTable(path, key=lambda r: r["idx"])
    assert {k: r["v"] for k, r in table.rows.items()} == {1: "c", 2: "b"}
    assert [json.loads(x)["idx"] for x in path.read_text().splitlines()] == [1, 2]
    with pytest.raises(ValueError):
        table.append({"idx": 2})


def test_run_against_faulty_judge_and_resume(data_dir, tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    out = tmp_path / "out"
    with FaultServer(slow_s=1.0, retry_after_ms=10) as srv:
        argv = ["--model_path", str(tiny_llama_dir), "--data_dir", str(data_dir), "--output_dir", str(out),
                "--max_length", "256", "--max_new_tokens", "4", "--temperature", "0",
                "--judge_base_url", srv.base_url, "--judge_timeout", "0.5", "--judge_runs", "2",
                "--concurrency", "3"]
        summary = lbc.main(argv)
        expected = [s for i, s in SCORES.items() if i != 2]  # the mean by hand: case 2 failed
        assert summary["mean"] == pytest.approx(sum(expected) / 7, abs=1e-12)
        assert (summary["num_scored"], summary["num_failed"], summary["judgements_failed"]) == (7, 1, 2)
        en = [s for i, s in SCORES.items() if i not in (2, 4, 8)]
        assert summary["per_language"]["en"]["mean"] == pytest.approx(sum(en) / len(en))
        assert summary["per_language"]["zh"]["mean"] == pytest.approx((SCORES[4] + SCORES[8]) / 2)
        preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        assert sorted(p["idx"] for p in preds) == list(range(1, 9))
        assert all(p["truncated"] and p["input_tokens"] > 256 for p in preds)
        # auto picked the fixture tokenizer's chat template; the prompt = 256 tokens + the template's
        assert all(p["template"] == "chat_template" and 256 < p["prompt_tokens"] < 256 + 40 for p in preds)
        assert json.loads((out / "scores.json").read_text())["mean"] == summary["mean"]

        # Re-run: nothing generated, only the failed case asked again (6 asks x 2 runs), no duplicates.
        srv.reset_counts()
        before = (out / "predictions.jsonl").read_text()
        again = lbc.main(argv)
        assert (out / "predictions.jsonl").read_text() == before
        assert dict(srv.requests) == {"case=2": 12} and again["mean"] == summary["mean"]
        rows = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
        assert len(rows) == 16 and len({(r["idx"], r["run"]) for r in rows}) == 16

        # Without --retry_failed the re-run asks nothing at all.
        srv.reset_counts()
        lbc.main(argv + ["--retry_failed", "false"])
        assert sum(srv.requests.values()) == 0

        # Generation through an OpenAI-compatible server (the fault server's echo model), English only.
        summary = lbc.main(argv[2:4] + ["--model_path", str(tiny_llama_dir), "--output_dir", str(tmp_path / "srv"),
                                        "--gen_base_url", srv.base_url, "--gen_model", "echo", "--lang", "en",
                                        "--max_length", "64", "--do_judge", "false"])
        preds = [json.loads(x) for x in (tmp_path / "srv" / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 6 and all(p["template"] == "server" and p["prediction"].startswith("Answer:")
                                       for p in preds)
        assert srv.requests["echo"] == 6
