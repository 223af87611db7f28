"""Needle_test/: placement at the right depth for tokenizers of three algorithms (the original put the
needle at depth 0 for every non-ChatGLM tokenizer), exact context lengths, the match scorer, resumable
prediction, and the heatmap file."""

import json
from pathlib import Path

import pytest
import script_module

from tools import needle_check, synthetic

ROOT = Path(__file__).resolve().parents[1]
NEEDLE, QUESTION = synthetic.fact_sentence("Zorbalin", "4821"), synthetic.fact_question("Zorbalin")
DEPTHS = [0, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 100]
BUFFER = 50


def _script(name):
    return script_module.load(f"Needle_test/{name}.py", f"needle_{name}")


prompt, pred, needle_eval, vis = (_script(n) for n in ("prompt", "pred", "eval", "vis"))


@pytest.fixture(scope="module")
def haystack(tmp_path_factory):
    path = tmp_path_factory.mktemp("haystack")
    synthetic.write_haystack(path, num_files=2, words_per_file=1500)
    return path


@pytest.fixture(scope="module", params=needle_check.KINDS)
def built(request, tmp_path_factory, haystack):
    """(tokenizer, prompt rows) for one tokenizer algorithm at two lengths and 15 depths."""
    tmp = tmp_path_factory.mktemp(request.param)
    tok = needle_check.train_tokenizer(request.param, tmp / "tok")
    prompt.main(["--tokenizer", str(tmp / "tok"), "--haystack_dir", str(haystack), "--needle", NEEDLE,
                 "--retrieval_question", QUESTION, "--context_lengths", "600,2000",
                 "--depth_percents", ",".join(map(str, DEPTHS)), "--final_context_length_buffer", str(BUFFER),
                 "--out_dir", str(tmp / "prompts")])
    rows = [json.loads(x) for x in (tmp / "prompts" / "prompts.jsonl").read_text().splitlines()]
    return tok, rows


def _context(row) -> str:
    return row["messages"][-1]["content"].split("\n\nRead the document above and answer.")[0]


def test_needle_at_the_right_depth_for_each_tokenizer(built):
    tok, rows = built
    assert len(rows) == 2 * len(DEPTHS)
    snapped = 0
    for r in rows:
        ctx = _context(r)
        error, start, n_ctx = needle_check.placement_error(tok, ctx, NEEDLE, r["depth_percent"])
        assert error <= 2.0, (r["context_length"], r["depth_percent"], error)
        # exact length: the context re-encodes to the requested count, and prompt.py reports it
        assert n_ctx == r["context_tokens"] == r["context_length"] - BUFFER
        assert abs(start - r["needle_token_index"]) <= 1  # prompt.py's own measure agrees with the offsets
        at = ctx.find(NEEDLE)
        if r["snapped"] and r["depth_percent"] < 100:  # a sentence end found with THIS tokenizer: the needle follows a full stop
            assert at == 0 or ctx[:at].rstrip().endswith((".", "!", "?")), ctx[max(0, at - 40):at + 10]
            snapped += 1
        if r["depth_percent"] == 0:
            assert at == 0
        if r["depth_percent"] == 100:
            assert ctx.rstrip().endswith(NEEDLE)
    assert snapped >= 0.8 * len(rows)


def test_original_backoff_fails_the_check(built):
    """Negative control: the original backed off to a hard-coded ChatGLM period id (30930); a tokenizer
    without that id never finds it, so the needle lands at 0 — the check must catch that."""
    tok, rows = built
    r = next(r for r in rows if r["depth_percent"] == 50 and r["context_length"] == 2000)
    hay = needle_check.tokens_before  # reuse nothing of prompt.py: rebuild the buggy context directly
    ctx_ids = tok(_context(r).replace(NEEDLE, ""), add_special_tokens=False)["input_ids"]
    point = len(ctx_ids) // 2
    while point > 0 and ctx_ids[point - 1] != 30930:
        point -= 1
    buggy = prompt.join(prompt.join(tok.decode(ctx_ids[:point]), NEEDLE), tok.decode(ctx_ids[point:]))
    assert hay(tok, buggy, buggy.find(NEEDLE)) == 0
    assert needle_check.placement_error(tok, buggy, NEEDLE, 50)[0] > 40


def test_bad_flags_are_one_line_errors(tokenizer_dir, capsys):
    from longalign.scriptargs import run_main

    for argv, message in ((["--needle", NEEDLE, "--retrieval_question", QUESTION], "--tokenizer is required"),
                          (["--tokenizer", str(tokenizer_dir), "--needle", NEEDLE, "--retrieval_question", QUESTION,
                            "--context_lengths", "1000,x"], "comma-separated list of int"),
                          (["--tokenizer", str(tokenizer_dir), "--haystack_dir", str(ROOT / "tests"), "--needle", NEEDLE,
                            "--retrieval_question", QUESTION, "--context_lengths", "400"], "has no .txt files")):
        with pytest.raises(SystemExit) as e:
            run_main(prompt.main, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_match_scorer():
    assert needle_eval.match_score("The secret code of Zorbalin is 4821.", "4821") == 10
    assert needle_eval.match_score("the SECRET code of\nzorbalin   is #4821", NEEDLE) == 10
    assert needle_eval.match_score("The secret code of Zorbalin is 4822.", "4821") == 1
    assert needle_eval.match_score("I do not know.", NEEDLE) == 1


def test_pred_eval_vis_resumable(tiny_llama_dir, haystack, tmp_path):
    prompt.main(["--tokenizer", str(tiny_llama_dir), "--haystack_dir", str(haystack), "--needle", NEEDLE,
                 "--retrieval_question", QUESTION, "--context_lengths", "300,500", "--depth_percents", "0,50,100",
                 "--final_context_length_buffer", str(BUFFER), "--out_dir", str(tmp_path / "prompts")])
    argv = ["--model_path", str(tiny_llama_dir), "--prompts_file", str(tmp_path / "prompts" / "prompts.jsonl"),
            "--out_dir", str(tmp_path / "pred"), "--template", "none", "--max_new_tokens", "3"]
    pred_file = tmp_path / "pred" / "predictions.jsonl"
    pred.main(argv)
    first = pred_file.read_text().splitlines()
    assert len(first) == 6
    # Cut the file as a killed run would (one line missing, one half-written): the re-run redoes those
    # two only, and the finished ones stay byte for byte.
    pred_file.write_text("\n".join(first[:4]) + "\n" + first[4][:20])
    pred.main(argv)
    again = pred_file.read_text().splitlines()
    assert again[:4] == first[:4] and sorted(again) == sorted(first)

    # Overwrite one answer with the right one: the match scorer gives exactly that cell a 10.
    rows = [json.loads(x) for x in again]
    rows[2]["prediction"] = NEEDLE
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = needle_eval.main(["--predictions_file", str(pred_file), "--scorer", "match", "--key_phrase", "4821"])
    assert summary["mean"] == pytest.approx((10 + 5 * 1) / 6) and summary["num_failed"] == 0
    assert needle_eval.main(["--predictions_file", str(pred_file), "--scorer", "match"])["num_scored"] == 6

    png = tmp_path / "heat.png"
    mean = vis.main(["--scores_file", str(tmp_path / "pred" / "scores.jsonl"), "--out", str(png)])
    assert mean == pytest.approx(summary["mean"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    lengths, depths, grid = vis.grid([json.loads(x) for x in (tmp_path / "pred" / "scores.jsonl").read_text().splitlines()])
    assert lengths == [300, 500] and depths == [0, 50, 100]
    assert sorted(v for row in grid for v in row) == [1, 1, 1, 1, 1, 10]
