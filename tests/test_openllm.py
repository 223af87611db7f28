"""OpenLLM/eval.py: the general stage (ARC, HellaSwag, TruthfulQA, MMLU) through lm-eval's own tasks.

- hand-checked values: for a tiny model and one synthetic case per task, every choice's log-likelihood is computed
  here by brute force (one unbatched forward pass of transformers' own LlamaForCausalLM, log-softmax, sum over the
  choice's tokens), and acc, acc_norm (divided by the choice's characters) and mc2 (probability mass of the true
  answers) from them equal the stage's; negative controls: the prompt with a chat template, and length
  normalisation by tokens, give other numbers;
- the prompts hold the leaderboard's shots (25, 10, 0, 5) from the right splits (MMLU: the dev split's first 5);
- a re-run computes nothing and loads no model; user errors are one sentence, exit 2;
- tools/synthetic_general.py writes the hub datasets' fields, deterministic by seed.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from longalign.scriptargs import run_main
from tools import synthetic_general

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("openllm_eval", ROOT / "OpenLLM" / "eval.py")
general = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(general)

LEADERBOARD_SHOTS = {"arc_challenge": 25, "hellaswag": 10, "truthfulqa_mc2": 0, "mmlu_anatomy": 5}
TOL = 1e-6  # the metrics, absolute; the log-likelihoods, relative


@pytest.fixture()
def data_dir(tmp_path):
    return synthetic_general.write_cases(tmp_path / "data", num_cases=1, mmlu_subjects=("anatomy",), seed=3)


def run(argv):
    return run_main(general.main, argv)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def brute_force_ll(model, tokenizer, context: str, choice: str) -> float:
    """log p(choice | context): the context's tokens (with the tokenizer's own specials), then the choice's."""
    import torch

    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
    assert tokenizer(context + choice)["input_ids"] == ctx + cont  # the choice starts a token: no split to argue
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_hand_checked_values_leaderboard_shots_and_rerun(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(out), "--data_dir", str(data_dir),
            "--mmlu_subjects", "anatomy", "--batch_size", "3"]
    first = run(argv)
    assert first["num_fewshot"] == LEADERBOARD_SHOTS
    assert first["num_docs"] == dict.fromkeys(LEADERBOARD_SHOTS, 1)
    samples = {r["task"]: r for r in read_jsonl(out / "samples.jsonl")}
    assert first["computed"] == sum(len(r["choices"]) for r in samples.values()) == 4 + 4 + 5 + 4

    # the prompts: lm-eval's text, the leaderboard's shots from the right split, no chat template
    def rows(name):
        return read_jsonl(data_dir / name)

    arc, hs, tqa, mmlu = (samples[t]["context"] for t in LEADERBOARD_SHOTS)
    arc_test, = rows("ai2_arc/ARC-Challenge/test.jsonl")
    train_questions = {r["question"] for r in rows("ai2_arc/ARC-Challenge/train.jsonl")}
    blocks = arc.split("\n\n")
    assert len(blocks) == 26 and blocks[-1] == f"Question: {arc_test['question']}\nAnswer:"
    assert all(b.split("\n")[0].removeprefix("Question: ") in train_questions for b in blocks[:-1])
    hs_train = {r["activity_label"] for r in rows("hellaswag/train.jsonl")}
    assert len(hs.split("\n\n")) == 11 and all(b.split(":")[0] in hs_train for b in hs.split("\n\n")[:-1])
    assert tqa.count("\nQ: ") == 6 and tqa.endswith(f"Q: {rows('truthful_qa/multiple_choice/validation.jsonl')[0]['question']}\nA:")
    dev = rows("mmlu/anatomy/dev.jsonl")  # lm-eval's first_n sampler: the dev split's first 5, in order
    assert mmlu.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert [b.split("\n")[0] for b in mmlu.split("\n\n")[1:6]] == [r["question"] for r in dev]
    assert "<|" not in arc + hs + tqa + mmlu and "[INST]" not in arc  # raw text, no chat markup

    # brute force, independent of lm-eval: transformers' own Llama class on the same weights, one pass per choice
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ours = {}
    for task, s in samples.items():
        lls = np.array([brute_force_ll(model, tokenizer, s["context"], c) for c in s["choices"]])
        # lm-eval sums float32 log-probabilities of a padded batch: equal to float32 rounding (|ll| up to ~300 here)
        assert np.abs(lls - np.array(s["lls"])).max() <= TOL * np.abs(lls).max(), (task, lls, s["lls"])
        # the metrics by hand, from the model's log-likelihoods as the stage recorded them (to 1e-6), and from ours
        # (the same picks; mc2 moves by the float32 rounding of the log-likelihoods: 1e-5)
        for source, values, tol in (("stage", np.array(s["lls"]), TOL), ("brute force", lls, 1e-5)):
            chars = np.array([len(c.strip()) for c in s["choices"]])  # lm-eval divides by the choice's characters
            if task == "truthfulqa_mc2":
                labels = np.array(rows("truthful_qa/multiple_choice/validation.jsonl")[0]["mc2_targets"]["labels"])
                p = np.exp(values) / np.exp(values).sum()
                mine = {"mc2": p[labels == 1].sum()}
            else:
                mine = {"acc": float(np.argmax(values) == s["target"])}
                if not task.startswith("mmlu_"):  # MMLU's YAML scores acc only
                    mine["acc_norm"] = float(np.argmax(values / chars) == s["target"])
            assert set(mine) == {k for k in ("acc", "acc_norm", "mc2") if k in s}, task
            for metric, value in mine.items():
                assert abs(value - s[metric]) <= tol, (source, task, metric, value, s[metric])
            ours.setdefault(task, mine)
    cols = first["columns"]
    assert abs(cols["arc"] - 100 * ours["arc_challenge"]["acc_norm"]) <= TOL
    assert abs(cols["hellaswag"] - 100 * ours["hellaswag"]["acc_norm"]) <= TOL
    assert abs(cols["truthfulqa"] - 100 * ours["truthfulqa_mc2"]["mc2"]) <= TOL
    assert abs(cols["mmlu"] - 100 * ours["mmlu_anatomy"]["acc"]) <= TOL and first["mmlu_subjects"] == {"anatomy": cols["mmlu"]}
    assert 0 < cols["truthfulqa"] < 100  # mc2 is a probability mass, not a 0/1 hit
    print("hand-checked:", {t: {k: round(float(v), 6) for k, v in m.items()} for t, m in ours.items()})

    # negative controls: a chat-templated prompt scores otherwise; so does normalising by tokens, not characters
    s = samples["arc_challenge"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": s["context"]}], tokenize=False,
                                         add_generation_prompt=True)
    assert abs(brute_force_ll(model, tokenizer, chat, s["choices"][0]) - s["lls"][0]) > 1e-2
    per_token = [np.array(r["lls"]) / [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in r["choices"]]
                 for r in samples.values()]
    per_char = [np.array(r["lls"]) / [len(c.strip()) for c in r["choices"]] for r in samples.values()]
    assert any(not np.allclose(a / a.sum(), b / b.sum()) for a, b in zip(per_token, per_char, strict=True))

    # a re-run computes nothing and loads no model. To see acc and acc_norm part, the ARC and HellaSwag cases'
    # gold answers become the choice acc_norm picks (a label is not part of its own case's prompt, so every request
    # is the same): acc_norm is then 1, acc is 1 only where the unnormalised pick is the same choice
    monkeypatch.setattr("longalign.generation.load_causal_lm", lambda *a, **k: pytest.fail("a re-run loaded the model"))
    picks = {t: int(np.argmax(np.array(samples[t]["lls"]) / [len(c.strip()) for c in samples[t]["choices"]]))
             for t in ("arc_challenge", "hellaswag")}
    arc_test["answerKey"] = arc_test["choices"]["label"][picks["arc_challenge"]]
    (data_dir / "ai2_arc/ARC-Challenge/test.jsonl").write_text(json.dumps(arc_test) + "\n")
    hs_case, = rows("hellaswag/validation.jsonl")
    (data_dir / "hellaswag/validation.jsonl").write_text(json.dumps(hs_case | {"label": str(picks["hellaswag"])}) + "\n")
    again = run(argv)
    assert again["computed"] == 0 and again["cached"] == first["computed"]
    assert len(read_jsonl(out / "loglikelihoods.jsonl")) == first["computed"]
    assert again["columns"]["arc"] == again["columns"]["hellaswag"] == 100.0
    assert (again["columns"]["truthfulqa"], again["columns"]["mmlu"]) == (cols["truthfulqa"], cols["mmlu"])
    for t, r in ((r["task"], r) for r in read_jsonl(out / "samples.jsonl")):
        if t in picks:
            assert (r["acc"], r["acc_norm"]) == (float(np.argmax(r["lls"]) == picks[t]), 1.0)
    print("after relabelling:", {t: (r["acc"], r["acc_norm"]) for t, r in ((r["task"], r) for r in read_jsonl(
        out / "samples.jsonl")) if t in picks})


def fails_with(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        run(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_user_errors(tiny_llama_dir, tmp_path, capsys):
    data = synthetic_general.write_cases(tmp_path / "data", num_cases=1, mmlu_subjects=("anatomy",))
    base = ["--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(tmp_path / "out"), "--data_dir", str(data),
            "--mmlu_subjects", "anatomy"]
    fails_with(capsys, base[:4] + ["--data_dir", str(tmp_path / "nope")], "does not exist; put the datasets' files there")
    fails_with(capsys, base + ["--tasks", "arc,gsm8k"], "--tasks gsm8k is not a column")
    fails_with(capsys, base + ["--mmlu_subjects", "anatomy,astrology"], "--mmlu_subjects astrology is not an MMLU subject")
    (data / "hellaswag" / "train.jsonl").unlink()
    fails_with(capsys, base, "has no hellaswag/train.jsonl (task hellaswag)")
    train = data / "ai2_arc" / "ARC-Challenge" / "train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:3]))
    fails_with(capsys, base + ["--tasks", "arc"], "holds 3 cases; task arc_challenge takes 25 few-shot examples")
    (data / "mmlu" / "anatomy" / "test.jsonl").write_text('{"question": "q", "choices": ["a", "b", "c", "d"]}\n')
    fails_with(capsys, base + ["--tasks", "mmlu"], "test.jsonl line 1 lacks answer")
    fails_with(capsys, base + ["--gen_base_url", "http://127.0.0.1:9/v1"], "--gen_base_url needs --gen_model")


def test_synthetic_cases_are_in_the_hub_fields_and_deterministic(tmp_path):
    a = synthetic_general.write_cases(tmp_path / "a", num_cases=2, mmlu_subjects=("virology",), seed=1)
    b = synthetic_general.write_cases(tmp_path / "b", num_cases=2, mmlu_subjects=("virology",), seed=1)
    c = synthetic_general.write_cases(tmp_path / "c", num_cases=2, mmlu_subjects=("virology",), seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jsonl"))
    assert [str(f) for f in files] == ["ai2_arc/ARC-Challenge/test.jsonl", "ai2_arc/ARC-Challenge/train.jsonl",
                                       "hellaswag/train.jsonl", "hellaswag/validation.jsonl", "mmlu/virology/dev.jsonl",
                                       "mmlu/virology/test.jsonl", "truthful_qa/multiple_choice/validation.jsonl"]
    assert all((a / f).read_text() == (b / f).read_text() for f in files)
    assert any((a / f).read_text() != (c / f).read_text() for f in files)
    for column, spec in general.COLUMNS.items():
        folder = a / spec["data"].format(subject="virology")
        for split in spec["splits"]:
            for row in read_jsonl(folder / f"{split}.jsonl"):
                assert set(spec["fields"]) <= set(row), (column, split)
    arc, = read_jsonl(a / "ai2_arc/ARC-Challenge/test.jsonl")[:1]
    assert arc["answerKey"] in arc["choices"]["label"] and len(arc["choices"]["text"]) == 4
    hs = read_jsonl(a / "hellaswag/validation.jsonl")[0]
    assert isinstance(hs["label"], str) and len(hs["endings"]) == 4  # a string label, as on the hub
    assert len(read_jsonl(a / "ai2_arc/ARC-Challenge/train.jsonl")) >= 25 and len(read_jsonl(a / "hellaswag/train.jsonl")) >= 10
    assert len(read_jsonl(a / "mmlu/virology/dev.jsonl")) == 5
