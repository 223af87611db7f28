"""tools/rubric_judge.py, the quickstart's offline judge (NOT GPT-4): token F1 against the reference
answer by hand, the prompts it reads, and a LongBench-Chat run judged by it through the real client path."""

import json
from pathlib import Path

import pytest
import script_module

from longalign.judge import judge, make_client
from tools import demo_data, rubric_judge, synthetic_eval
from tools.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "To whom should questions about the print package be sent, and where are copies of the print archive kept?"
REFERENCE = "Questions about the print package should be sent to Maya Cohen. Copies of the print archive are kept in Nairobi."


def test_token_f1_by_hand():
    # reference words the question lacks: maya cohen in nairobi (4); a right and a wrong fact:
    answer = "Questions about the print package should be sent to Maya Cohen. The print archive is kept in Osaka."
    f = rubric_judge.token_f1(answer, REFERENCE, QUESTION)
    assert f["reference_left"] == ["maya", "cohen", "in", "nairobi"]
    assert (f["shared"], f["answer_words"], f["reference_words"]) == (3, 5, 4)  # answer left: maya cohen is in osaka
    assert f["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert rubric_judge.rating(answer, REFERENCE, QUESTION) == 7.0
    assert rubric_judge.rating(answer, REFERENCE) == 8.4  # all words counted: the question's words dominate
    assert rubric_judge.rating(REFERENCE.upper(), REFERENCE, QUESTION) == 10.0  # case and punctuation do not count
    assert rubric_judge.rating("Maya Cohen, in Nairobi.", REFERENCE, QUESTION) == 10.0  # no need to restate
    assert rubric_judge.rating(QUESTION, REFERENCE, QUESTION) == 1.0  # restating the question earns nothing
    assert rubric_judge.rating("", REFERENCE, QUESTION) == 1.0
    assert rubric_judge.rating("Nairobi", "Nairobi", "Nairobi?") == 10.0  # nothing left: all words count


def test_reads_both_prompt_formats():
    lbc_prompt = synthetic_eval.JUDGE_PROMPT.format(QUESTION, REFERENCE, "a", 10, "b", 5, "c", 2, "The answer.\n\nMore.")
    assert rubric_judge.parse_prompt(lbc_prompt) == (QUESTION, REFERENCE, "The answer.\n\nMore.")
    needle_eval = script_module.load("Needle_test/eval.py", "needle_eval")
    needle_prompt = needle_eval.RUBRIC.format(question="Q?", needle=REFERENCE, answer="45 seconds")
    assert rubric_judge.parse_prompt(needle_prompt) == ("Q?", REFERENCE, "45 seconds")
    # negative control: no sections, no rating (a failed judgement, never a made-up score)
    assert rubric_judge.parse_prompt("Rate this: [[rating]]") is None
    assert "[[" not in rubric_judge.reply("Rate this answer please.")


def test_served_through_the_judge_client(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    prompt = synthetic_eval.JUDGE_PROMPT.format(QUESTION, REFERENCE, "a", 10, "b", 5, "c", 2, "Maya Cohen; Oslo.")
    with FaultServer() as srv:
        client = make_client(srv.base_url, timeout=5, max_retries=0)
        j = judge(client, "rubric-f1-not-gpt4", prompt)
        assert j.score == rubric_judge.rating("Maya Cohen; Oslo.", REFERENCE, QUESTION) == 6.1 and "not GPT-4" in j.reply
        j = judge(client, "rubric-f1-not-gpt4", "no sections here", max_reasks=1)
        assert j.score is None and j.asks == 2 and srv.served["garbage"] == 2


def test_longbench_chat_run_scored_by_the_rubric(tmp_path, monkeypatch):
    """eval.py end to end on demo_data's cases, judged by the rubric through the server. The answers are the
    cases' own few-shot answers (scored 10, 5 and 2 by the scale) and the bare question, written as finished
    predictions so nothing is generated: the rubric orders them as the scale does, and the mean is the one
    computed here."""
    lbc = script_module.load("LongBench_Chat/eval.py", "lbc_eval")
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    cases, shots = demo_data.lbc_cases(8, min_words=100)
    data = synthetic_eval.write_files(tmp_path / "data", cases, shots)
    answers = [shots[i][i % 3]["answer"] if i < 6 else cases[i]["query"] for i in range(8)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text("".join(json.dumps({"idx": c["idx"], "lang": "en", "prediction": a}) + "\n"
                                                   for c, a in zip(cases, answers, strict=True)))
    with FaultServer() as srv:
        summary = lbc.main(["--data_dir", str(data), "--output_dir", str(out), "--judge_base_url", srv.base_url,
                            "--judge_model", "rubric-f1-not-gpt4", "--judge_runs", "1"])
    expected = [rubric_judge.rating(a, c["answer"], c["query"]) for c, a in zip(cases, answers, strict=True)]
    assert summary["num_scored"] == 8 and summary["mean"] == pytest.approx(sum(expected) / 8)
    by_scale = {10: [], 5: [], 2: []}
    for i in range(6):
        by_scale[shots[i][i % 3]["score"]].append(expected[i])
    assert by_scale[10] == [10.0, 10.0] and all(2 < x < 10 for x in by_scale[5]) and max(by_scale[2]) < min(by_scale[5])
    assert expected[6:] == [1.0, 1.0]  # the question alone
