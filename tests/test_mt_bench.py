"""MT_Bench/eval.py against FastChat's contract: two-turn answers (turn 2 sees turn 1), the four single-answer
judge prompts (reference variants for math, reasoning, coding), scores equal to planned ones computed by hand,
judge requests counted and none repeated on a re-run, the data downloaded from a URL or read from a folder.

The judge is tools/fault_server.py: every turn of tools/synthetic_mt_bench.py carries a marker that fixes its
rating and the faults it meets, so each figure below is known before the run."""

import functools
import http.server
import json
import shutil
import string
import threading
from pathlib import Path

import pytest
import script_module

from longalign.scriptargs import run_main
from tools import synthetic_mt_bench as syn
from tools.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
mt = script_module.load("MT_Bench/eval.py", "mt_bench_eval")

# FastChat's facts, written out here as the independent reference (fastchat/llm_judge/common.py and
# data/judge_prompts.jsonl at the pinned commit): per-category temperatures, the categories judged against
# a reference, and the placeholders of each single-answer prompt.
FASTCHAT_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "reasoning": 0.0, "math": 0.0, "coding": 0.0,
                        "extraction": 0.0, "stem": 0.1, "humanities": 0.1}
FASTCHAT_REF = {"math", "reasoning", "coding"}
FASTCHAT_FIELDS = {"single-v1": {"question", "answer"}, "single-math-v1": {"question", "ref_answer_1", "answer"},
                   "single-v1-multi-turn": {"question_1", "answer_1", "question_2", "answer_2"},
                   "single-math-v1-multi-turn": {"question_1", "ref_answer_1", "question_2", "ref_answer_2",
                                                 "answer_1", "answer_2"}}

# 8 questions (ids 81-88, one per category in FastChat's order); the turn t of question i is judge case
# 2i + t. Case 1 meets a 429 and a 500 (transport retries, not re-asks), case 4 one reply without a rating,
# case 10 two, case 7 (math 84, turn 1) is never rated: 6 asks, then failed.
PLAN = {1: (syn.planned_score(1), ("429", "500")), 4: (syn.planned_score(4), ("garbage",)), 7: (None, ()),
        10: (syn.planned_score(10), ("garbage", "garbage"))}
SCORES = {c: syn.planned_score(c) for c in range(1, 17) if c != 7}  # case -> rating; 7 failed
ASKS = 16 + 1 + 2 + 5  # one ask per judgement, + the re-asks of cases 4, 10 and 7


def _mean(xs):
    return sum(xs) / len(xs)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture()
def data_dir(tmp_path):
    return syn.write_mt_bench(tmp_path / "data", 8, plan=PLAN)


@pytest.fixture()
def generate_calls(monkeypatch):
    """Every Generator.generate call as (messages, temperature), observed on the way in."""
    calls, real = [], mt.Generator.generate

    def spy(self, messages, **kwargs):
        calls.append(([dict(m) for m in messages], kwargs.get("temperature")))
        return real(self, messages, **kwargs)

    monkeypatch.setattr(mt.Generator, "generate", spy)
    return calls


def _check_turn_two_sees_turn_one(out: Path, data_dir: Path, calls: list) -> None:
    questions = {q["question_id"]: q for q in _rows(data_dir / "question.jsonl")}
    answers = _rows(out / "answers.jsonl")
    assert len(calls) == 2 * len(answers)
    by_first = {}
    for messages, temperature in calls:
        by_first.setdefault(messages[0]["content"], []).append((messages, temperature))
    for a in answers:
        q, (a1, a2) = questions[a["question_id"]], a["choices"][0]["turns"]
        first, second = sorted(by_first[q["turns"][0]], key=lambda c: len(c[0]))
        assert first[0] == [{"role": "user", "content": q["turns"][0]}]
        # the second request holds q1, exactly the first answer written to answers.jsonl, and q2
        assert second[0] == [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": a1},
                             {"role": "user", "content": q["turns"][1]}]
        assert first[1] == second[1] == a["temperature"] == FASTCHAT_TEMPERATURE[q["category"]]
        assert isinstance(a2, str)


def test_synthetic_data_has_fastchat_schema(data_dir):
    questions = _rows(data_dir / "question.jsonl")
    assert [q["category"] for q in questions] == list(FASTCHAT_TEMPERATURE)  # FastChat's 8, in its order
    for i, q in enumerate(questions):
        assert set(q) == {"question_id", "category", "turns"} | ({"reference"} if q["category"] in FASTCHAT_REF else set())
        assert q["question_id"] == 81 + i and len(q["turns"]) == 2
        for t, text in enumerate(q["turns"], 1):
            assert text.count("{{judge ") == 1 and f"case={2 * i + t} " in text
    refs = _rows(data_dir / "reference_answer" / "gpt-4.jsonl")
    assert sorted(r["question_id"] for r in refs) == [q["question_id"] for q in questions if q["category"] in FASTCHAT_REF]
    assert all(len(r["choices"][0]["turns"]) == 2 for r in refs)
    prompts = {p["name"]: p for p in _rows(data_dir / "judge_prompts.jsonl")}
    assert set(prompts) == set(FASTCHAT_FIELDS)
    for name, p in prompts.items():
        assert set(p) == {"name", "type", "system_prompt", "prompt_template", "description", "category", "output_format"}
        assert (p["type"], p["output_format"]) == ("single", "[[rating]]")
        assert {f for _, f, _, _ in string.Formatter().parse(p["prompt_template"]) if f} == FASTCHAT_FIELDS[name]
    # eval.py's constants are FastChat's
    assert {c: mt.CATEGORY_TEMPERATURE[c] for c in FASTCHAT_TEMPERATURE} == FASTCHAT_TEMPERATURE
    assert set(mt.NEED_REF_CATS) & set(FASTCHAT_TEMPERATURE) == FASTCHAT_REF and mt.JUDGE_FIELDS == FASTCHAT_FIELDS


def test_run_in_process_scores_requests_and_resume(data_dir, tiny_llama_dir, tmp_path, monkeypatch, generate_calls):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    out = tmp_path / "out"
    with FaultServer(retry_after_ms=10) as srv:
        argv = ["--model_name_or_path", str(tiny_llama_dir), "--mt_bench_dir", str(data_dir), "--output_dir", str(out),
                "--max_new_tokens", "4", "--judge_base_url", srv.base_url, "--concurrency", "3"]
        s = mt.main(argv)

        # Requests: 16 judgements + the re-asks; the server also saw the 429 and the 500 the client retried.
        assert (s["generated"], s["judge_requests"]) == (8, ASKS)
        assert sum(srv.requests.values()) == ASKS + 2 and srv.requests["case=7"] == 6
        # Scores by hand: FastChat's mean over every graded (question, turn); case 7 failed, not zero.
        assert s["mean"] == pytest.approx(_mean(list(SCORES.values())), abs=1e-12)
        assert s["turn_1"] == pytest.approx(_mean([v for c, v in SCORES.items() if c % 2]), abs=1e-12)
        assert s["turn_2"] == pytest.approx(_mean([v for c, v in SCORES.items() if not c % 2]), abs=1e-12)
        assert (s["num_scored"], s["num_failed"]) == (15, 1)
        for i, category in enumerate(FASTCHAT_TEMPERATURE):
            got = [SCORES[c] for c in (2 * i + 1, 2 * i + 2) if c in SCORES]
            assert s["per_category"][category]["mean"] == pytest.approx(_mean(got), abs=1e-12)
        assert s["per_category"]["math"]["turn_1"] is None and s["per_category"]["math"]["num_scored"] == 1
        assert json.loads((out / "scores.json").read_text())["mean"] == s["mean"]

        _check_turn_two_sees_turn_one(out, data_dir, generate_calls)

        # Each turn got its FastChat prompt, filled with the GPT-4 reference answers where the category needs them.
        prompts = {p["name"]: p for p in _rows(data_dir / "judge_prompts.jsonl")}
        refs = {r["question_id"]: r["choices"][0]["turns"] for r in _rows(data_dir / "reference_answer" / "gpt-4.jsonl")}
        questions = {q["question_id"]: q for q in _rows(data_dir / "question.jsonl")}
        answers = {a["question_id"]: a["choices"][0]["turns"] for a in _rows(out / "answers.jsonl")}
        judged = _rows(out / "judgements.jsonl")
        assert sorted((j["question_id"], j["turn"]) for j in judged) == [(q, t) for q in range(81, 89) for t in (1, 2)]
        for j in judged:
            q, a, ref = questions[j["question_id"]], answers[j["question_id"]], j["category"] in FASTCHAT_REF
            name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if j["turn"] == 2 else "")
            values = ({"question": q["turns"][0], "answer": a[0]} if j["turn"] == 1 else
                      {"question_1": q["turns"][0], "question_2": q["turns"][1], "answer_1": a[0], "answer_2": a[1]})
            if ref:
                values |= {"ref_answer_1": refs[q["question_id"]][0], "ref_answer_2": refs[q["question_id"]][1]}
            assert j["judge"] == ["gpt-4", name] and j["user_prompt"] == prompts[name]["prompt_template"].format(**values)
            # (the format above already says it; spelled out:) the reference text is there exactly when needed
            assert (refs[q["question_id"]][0] in j["user_prompt"]) if ref else ("Reference" not in j["user_prompt"])

        # Re-run: nothing generated; only the failed judgement is asked again (6 asks), no duplicate rows.
        srv.reset_counts()
        again = mt.main(argv)
        assert (again["generated"], again["judge_requests"], dict(srv.requests)) == (0, 6, {"case=7": 6})
        assert again["mean"] == s["mean"] and len(_rows(out / "judgements.jsonl")) == 16
        # Without --retry_failed: nothing at all.
        srv.reset_counts()
        again = mt.main(argv + ["--retry_failed", "false"])
        assert (again["generated"], again["judge_requests"], sum(srv.requests.values())) == (0, 0, 0)

        # A run killed while writing question 88: only it is generated again, and only its 2 turns judged.
        lines = (out / "answers.jsonl").read_text().splitlines()
        (out / "answers.jsonl").write_text("\n".join(lines[:-1]) + '\n{"question_id": 88, "answer')
        srv.reset_counts()
        again = mt.main(argv + ["--retry_failed", "false"])
        assert (again["generated"], again["judge_requests"], dict(srv.requests)) == (1, 2, {"case=15": 1, "case=16": 1})
        assert again["mean"] == s["mean"] and len(_rows(out / "judgements.jsonl")) == 16

        # Other generation settings on the same folder are refused.
        with pytest.raises(mt.UserError, match="max_new_tokens 4 \\(now 5\\)"):
            mt.main(argv + ["--max_new_tokens", "5"])


class _Files(http.server.SimpleHTTPRequestHandler):
    gets = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).gets += 1
        super().do_GET()


@pytest.fixture()
def file_server(tmp_path):
    """The synthetic files in FastChat's llm_judge/data layout, served on 127.0.0.1 -> (base URL, handler)."""
    root = tmp_path / "served"
    syn.write_mt_bench(root / "mt_bench", 8)
    (root / "mt_bench" / "judge_prompts.jsonl").rename(root / "judge_prompts.jsonl")
    handler = type("Handler", (_Files,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler, root
    httpd.shutdown()
    httpd.server_close()


def test_download_and_server_generation(file_server, tiny_llama_dir, tmp_path, monkeypatch, generate_calls):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    url, handler, served = file_server
    out, cache = tmp_path / "out", tmp_path / "cache"
    with FaultServer() as srv:
        argv = ["--model_name_or_path", str(tiny_llama_dir), "--mt_bench_url", url, "--cache_dir", str(cache),
                "--output_dir", str(out), "--gen_base_url", srv.base_url, "--gen_model", "echo",
                "--judge_base_url", srv.base_url, "--concurrency", "4"]
        s = mt.main(argv)
        assert handler.gets == 3 and srv.requests["echo"] == 16
        assert (s["generated"], s["judge_requests"], s["num_failed"]) == (8, 16, 0)
        assert s["mean"] == pytest.approx(_mean([syn.planned_score(c) for c in range(1, 17)]), abs=1e-12)
        cached = next(cache.iterdir())
        assert (cached / "question.jsonl").read_bytes() == (served / "mt_bench" / "question.jsonl").read_bytes()
        # the server answered each turn from the last user message: turn 2 was sent q2 after q1 and a1
        for a in _rows(out / "answers.jsonl"):
            assert a["template"] == "server" and all(t.startswith("Answer: ") for t in a["choices"][0]["turns"])
        _check_turn_two_sees_turn_one(out, served / "mt_bench", generate_calls)

        # The same command again: no download, no generation, no judge request.
        srv.reset_counts()
        again = mt.main(argv)
        assert (handler.gets, again["generated"], again["judge_requests"], sum(srv.requests.values())) == (3, 0, 0, 0)

        # The paper judged twice (--judge_runs 2): only the second judgement of each turn is asked; each turn's
        # score is the mean of its two (equal here: the plan is deterministic), so the means do not move.
        twice = mt.main(argv + ["--judge_runs", "2"])
        assert (twice["generated"], twice["judge_requests"], sum(srv.requests.values())) == (0, 16, 16)
        assert (twice["mean"], twice["turn_1"], twice["num_scored"]) == (s["mean"], s["turn_1"], 16)
        assert sorted({j.get("run", 0) for j in _rows(out / "judgements.jsonl")}) == [0, 1]


def _fails_with(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        run_main(mt.main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_download_errors_name_the_local_copy(file_server, tmp_path, monkeypatch, capsys):
    url, _, _ = file_server
    argv = ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--do_judge", "false"]
    err = _fails_with(capsys, argv + ["--mt_bench_url", url + "/nowhere"], "could not download")
    assert "--mt_bench_dir" in err and "404" in err
    # the pinned URL's files must be FastChat's: ours (served under the pinned URL's name) are refused
    monkeypatch.setattr(mt, "FASTCHAT_DATA_URL", url)
    _fails_with(capsys, argv + ["--mt_bench_url", url], "is not the file of FastChat commit")
    assert not list((tmp_path / "cache").rglob("*.jsonl"))


def test_user_errors(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", "unused", "--mt_bench_dir", str(data_dir), "--output_dir", str(out)]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _fails_with(capsys, argv, "OPENAI_API_KEY is not set")
    assert not out.exists()  # refused before any generation
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")

    questions = (data_dir / "question.jsonl").read_text().splitlines()
    (data_dir / "question.jsonl").write_text("\n".join(questions[:2] + ['{"question_id": 83,'] + questions[3:]))
    _fails_with(capsys, argv, "question.jsonl line 3 is not valid JSON")
    one_turn = json.loads(questions[2]) | {"turns": ["only one"]}
    (data_dir / "question.jsonl").write_text("\n".join(questions[:2] + [json.dumps(one_turn)] + questions[3:]))
    _fails_with(capsys, argv, "question.jsonl line 3 needs turns, a list of the 2 user turns")
    (data_dir / "question.jsonl").write_text("\n".join(questions))

    prompts = (data_dir / "judge_prompts.jsonl").read_text().splitlines()
    (data_dir / "judge_prompts.jsonl").write_text("\n".join(p for p in prompts if "single-math-v1-multi-turn" not in p))
    _fails_with(capsys, argv, "has no judge prompt named single-math-v1-multi-turn")
    bad = json.loads(prompts[0]) | {"prompt_template": "Grade {question} / {answer} / {answer_2}"}
    (data_dir / "judge_prompts.jsonl").write_text("\n".join([json.dumps(bad)] + prompts[1:]))
    _fails_with(capsys, argv, "prompt single-v1 has the fields")
    (data_dir / "judge_prompts.jsonl").write_text("\n".join(prompts))

    refs = (data_dir / "reference_answer" / "gpt-4.jsonl").read_text().splitlines()
    (data_dir / "reference_answer" / "gpt-4.jsonl").write_text("\n".join(refs[1:]))
    _fails_with(capsys, argv, "has no reference answer for question 83 (reasoning)")
    shutil.rmtree(data_dir / "reference_answer")
    _fails_with(capsys, argv, "has no reference_answer/gpt-4.jsonl")


# ---------------------------------------------------------------------------------------------
# Sampling as FastChat samples

def sampled_ranks(model, prompt_ids, out) -> list[int]:
    """For each generated token, how many vocabulary entries the model found more likely at that step."""
    import torch

    with torch.no_grad():
        logits = model(out).logits[0]  # (T, V)
    n = prompt_ids.shape[1]
    return [int((logits[t - 1] > logits[t - 1, out[0, t]]).sum()) for t in range(n, out.shape[1])]


def test_sampling_keeps_the_default_top_k_as_fastchat_does(tiny_llama_dir, monkeypatch):
    """FastChat's llm_judge calls generate with do_sample and the temperature only, so transformers' default
    top_k = 50 (and the checkpoint's top_p) filter the vocabulary; writing and roleplay answers (temperature 0.7)
    must not be sampled from all of it. Every token sampled here is among the model's 50 most likely at its step;
    the negative control (top_k=None, the filter off) samples outside them."""
    import torch

    from longalign.generation import Generator

    gen = Generator(str(tiny_llama_dir), template="none", max_new_tokens=48, temperature=0.7)
    calls = []
    real = gen.model.generate

    def spy(**kwargs):
        calls.append((kwargs, real(**kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(gen.model, "generate", spy)
    gen.generate([{"role": "user", "content": "Write a short poem about the harbor"}], temperature=1.0)
    (kwargs, out), = calls
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 1.0 and "top_k" not in kwargs and "top_p" not in kwargs
    ranks = sampled_ranks(gen.model, kwargs["input_ids"], out)
    assert len(ranks) >= 20 and max(ranks) < 50, ranks
    # negative control: the filter off (what generation.py passed before) samples from the whole vocabulary
    torch.manual_seed(gen.seed)
    loose = real(**kwargs | {"top_k": None, "top_p": None})
    assert max(sampled_ranks(gen.model, kwargs["input_ids"], loose)) >= 50
    # greedy: no sampling, the filters switched off explicitly (generate would warn about them otherwise)
    gen.generate([{"role": "user", "content": "hi"}], temperature=0.0)
    assert calls[-1][0]["do_sample"] is False and calls[-1][0]["top_k"] is None
