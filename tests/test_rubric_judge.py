"""longalign/rubric_judge.py, the quickstart's offline judge (NOT GPT-4): token F1 against the reference
answer by hand, the prompts it reads, and a LongBench-Chat run judged by it through the real client path."""

import importlib.util
import json
from pathlib import Path

import pytest

from longalign import demo_data, rubric_judge, synthetic_eval
from longalign.fault_server import FaultServer
from longalign.judge import judge, make_client

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "If no timeout is given, the mirror client waits 45 seconds before it gives up."


def test_token_f1_by_hand():
    # normalised reference: if no timeout is given mirror client waits 45 seconds before it gives up (14 words)
    f = rubric_judge.token_f1("The mirror client waits 45 seconds.", REFERENCE)
    assert (f["shared"], f["answer_words"], f["reference_words"]) == (5, 5, 14)
    assert f["f1"] == pytest.approx(2 * 1 * (5 / 14) / (1 + 5 / 14))
    assert rubric_judge.rating("The mirror client waits 45 seconds.", REFERENCE) == round(1 + 9 * f["f1"], 1) == 5.7
    assert rubric_judge.rating(REFERENCE.upper(), REFERENCE) == 10.0  # case and punctuation do not count
    assert rubric_judge.rating("Nothing in common here.", REFERENCE) == 1.0
    assert rubric_judge.rating("", REFERENCE) == 1.0
    # a wrong number costs the words it replaces; extra words cost precision
    wrong = rubric_judge.rating(REFERENCE.replace("45", "37"), REFERENCE)
    longer = rubric_judge.rating(REFERENCE + " It also logs every retry to the console.", REFERENCE)
    assert 1 < wrong < 10 and 1 < longer < 10


def test_reads_both_prompt_formats():
    lbc_prompt = synthetic_eval.JUDGE_PROMPT.format("Q?", REFERENCE, "a", 10, "b", 5, "c", 2, "The answer.\n\nMore.")
    assert rubric_judge.parse_prompt(lbc_prompt) == (REFERENCE, "The answer.\n\nMore.")
    spec = importlib.util.spec_from_file_location("needle_eval", ROOT / "Needle_test" / "eval.py")
    needle_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(needle_eval)
    needle_prompt = needle_eval.RUBRIC.format(question="Q?", needle=REFERENCE, answer="45 seconds")
    assert rubric_judge.parse_prompt(needle_prompt) == (REFERENCE, "45 seconds")
    # negative control: no sections, no rating (a failed judgement, never a made-up score)
    assert rubric_judge.parse_prompt("Rate this: [[rating]]") is None
    assert "[[" not in rubric_judge.reply("Rate this answer please.")


def test_served_through_the_judge_client(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    prompt = synthetic_eval.JUDGE_PROMPT.format("Q?", REFERENCE, "a", 10, "b", 5, "c", 2, "It waits 45 seconds.")
    with FaultServer() as srv:
        client = make_client(srv.base_url, timeout=5, max_retries=0)
        j = judge(client, "rubric-f1-not-gpt4", prompt)
        assert j.score == rubric_judge.rating("It waits 45 seconds.", REFERENCE) and "not GPT-4" in j.reply
        j = judge(client, "rubric-f1-not-gpt4", "no sections here", max_reasks=1)
        assert j.score is None and j.asks == 2 and srv.served["garbage"] == 2


def test_longbench_chat_run_scored_by_the_rubric(tmp_path, tiny_llama_dir, monkeypatch):
    """eval.py end to end on demo_data's cases: answers from the fault server's echo model (the last 80
    characters of the prompt), judged by the rubric; the mean equals the ratings computed here."""
    spec = importlib.util.spec_from_file_location("lbc_eval", ROOT / "LongBench_Chat" / "eval.py")
    lbc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lbc)
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    data = synthetic_eval.write_files(tmp_path / "data", *demo_data.lbc_cases(4, min_words=100))
    cases = json.loads((data / "test_cases.json").read_text())
    with FaultServer() as srv:
        summary = lbc.main(["--model_path", str(tiny_llama_dir), "--data_dir", str(data), "--output_dir",
                            str(tmp_path / "out"), "--gen_base_url", srv.base_url, "--gen_model", "echo",
                            "--judge_base_url", srv.base_url, "--judge_model", "rubric-f1-not-gpt4",
                            "--judge_runs", "1", "--max_length", "4096"])
    expected = [rubric_judge.rating("Answer: " + c["prompt"][-80:], c["answer"]) for c in cases]
    assert summary["num_scored"] == 4 and summary["mean"] == pytest.approx(sum(expected) / 4)
    assert len(set(expected)) > 1  # the scores depend on the answers
