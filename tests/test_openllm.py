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

import json
from pathlib import Path

import numpy as np
import pytest
import script_module
from test_chat_demo import glm_checkpoint  # noqa: F401  (a tiny ChatGLM3-format checkpoint, a module fixture)

from longalign.scriptargs import run_main
from tools import synthetic_general

ROOT = Path(__file__).resolve().parents[1]
general = script_module.load("OpenLLM/eval.py", "openllm_eval")

LEADERBOARD_SHOTS = {"arc_challenge": 25, "hellaswag": 10, "truthfulqa_mc2": 0, "mmlu_anatomy": 5}
TOL = 1e-6  # the metrics, absolute; the log-likelihoods, relative


@pytest.fixture()
def data_dir(tmp_path):
    # seed 7: both HellaSwag cases rank the choices differently with and without length normalisation, and one
    # TruthfulQA case has a mid-range mc2 (0.48): the hand check then tells acc from acc_norm and mc2 from a 0/1 hit
    return synthetic_general.write_cases(tmp_path / "data", num_cases=2, mmlu_subjects=("anatomy",), seed=7)


def run(argv):
    return run_main(general.main, argv)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def brute_force_ll(model, tokenizer, context: str, choice: str) -> float:
    """log p(choice | context): the context's tokens, then the choice's (no special tokens, as the leaderboard)."""
    import torch

    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
    assert tokenizer(context + choice, add_special_tokens=False)["input_ids"] == ctx + cont  # no split to argue
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def by_hand(task: str, lls: np.ndarray, choices: list[str], target: int, mc2_labels) -> dict:
    """acc (the most likely choice), acc_norm (the most likely per character of the choice, as lm-eval divides by
    len(choice)), mc2 (the probability mass of the true answers among all answers)."""
    if task == "truthfulqa_mc2":
        p = np.exp(lls) / np.exp(lls).sum()
        return {"mc2": p[np.array(mc2_labels) == 1].sum()}
    chars = np.array([len(c.strip()) for c in choices])
    out = {"acc": float(np.argmax(lls) == target), "acc_norm": float(np.argmax(lls / chars) == target)}
    return {"acc": out["acc"]} if task.startswith("mmlu_") else out  # MMLU's YAML scores acc only


def test_hand_checked_values_leaderboard_shots_and_rerun(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(out), "--data_dir", str(data_dir),
            "--mmlu_subjects", "anatomy", "--batch_size", "3"]
    first = run(argv)
    assert first["num_fewshot"] == LEADERBOARD_SHOTS
    assert first["num_docs"] == dict.fromkeys(LEADERBOARD_SHOTS, 2)
    samples = read_jsonl(out / "samples.jsonl")
    assert first["computed"] == sum(len(r["choices"]) for r in samples) == 2 * (4 + 4 + 4 + 4)

    def rows(name):
        return read_jsonl(data_dir / name)

    # the prompts: lm-eval's text, the leaderboard's shots from the right split, no chat template
    first_case = {}
    for r in samples:
        first_case.setdefault(r["task"], r)
    arc, hs, tqa, mmlu = (first_case[t]["context"] for t in LEADERBOARD_SHOTS)
    arc_tests = rows("ai2_arc/ARC-Challenge/test.jsonl")
    train_questions = {r["question"] for r in rows("ai2_arc/ARC-Challenge/train.jsonl")}
    blocks = arc.split("\n\n")
    assert len(blocks) == 26 and blocks[-1] == f"Question: {arc_tests[0]['question']}\nAnswer:"
    assert all(b.split("\n")[0].removeprefix("Question: ") in train_questions for b in blocks[:-1])
    hs_train = {r["activity_label"] for r in rows("hellaswag/train.jsonl")}
    assert len(hs.split("\n\n")) == 11 and all(b.split(":")[0] in hs_train for b in hs.split("\n\n")[:-1])
    tqa_cases = rows("truthful_qa/multiple_choice/validation.jsonl")
    assert tqa.count("\nQ: ") == 6 and tqa.endswith(f"Q: {tqa_cases[0]['question']}\nA:")
    dev = rows("mmlu/anatomy/dev.jsonl")  # lm-eval's first_n sampler: the dev split's first 5, in order
    assert mmlu.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert [b.split("\n")[0] for b in mmlu.split("\n\n")[1:6]] == [r["question"] for r in dev]
    assert "<|" not in arc + hs + tqa + mmlu and "[INST]" not in arc  # raw text, no chat markup

    # brute force, independent of lm-eval: transformers' own Llama class on the same weights, one pass per choice
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ours, worst = {}, 0.0
    for s in samples:
        task, labels = s["task"], tqa_cases[s["doc_id"]]["mc2_targets"]["labels"]
        lls = np.array([brute_force_ll(model, tokenizer, s["context"], c) for c in s["choices"]])
        # lm-eval sums float32 log-probabilities of a padded batch: equal to float32 rounding (|ll| up to ~300 here)
        worst = max(worst, np.abs(lls - s["lls"]).max() / np.abs(lls).max())
        assert np.abs(lls - np.array(s["lls"])).max() <= TOL * np.abs(lls).max(), (task, lls, s["lls"])
        # the metrics by hand, from the model's log-likelihoods as the stage recorded them (to 1e-6), and from ours
        # (the same picks; mc2 moves by the float32 rounding of the log-likelihoods: 1e-5)
        for values, tol in ((np.array(s["lls"]), TOL), (lls, 1e-5)):
            mine = by_hand(task, values, s["choices"], s["target"], labels)
            assert set(mine) == {k for k in ("acc", "acc_norm", "mc2") if k in s}, task
            for metric, value in mine.items():
                assert abs(value - s[metric]) <= tol, (task, s["doc_id"], metric, value, s[metric])
        ours.setdefault(task, []).append(by_hand(task, np.array(s["lls"]), s["choices"], s["target"], labels))
    mean = {t: {k: np.mean([c[k] for c in cases]) for k in cases[0]} for t, cases in ours.items()}
    cols = first["columns"]
    assert abs(cols["arc"] - 100 * mean["arc_challenge"]["acc_norm"]) <= TOL
    assert abs(cols["hellaswag"] - 100 * mean["hellaswag"]["acc_norm"]) <= TOL
    assert abs(cols["truthfulqa"] - 100 * mean["truthfulqa_mc2"]["mc2"]) <= TOL
    assert abs(cols["mmlu"] - 100 * mean["mmlu_anatomy"]["acc"]) <= TOL and first["mmlu_subjects"] == {"anatomy": cols["mmlu"]}
    assert any(0.01 < c["mc2"] < 0.99 for c in ours["truthfulqa_mc2"])  # a probability mass, not a 0/1 hit
    print(f"hand-checked (log-likelihoods equal to {worst:.1e} relative):",
          {t: [{k: round(float(v), 6) for k, v in c.items()} for c in cases] for t, cases in ours.items()})

    # negative controls: a chat-templated prompt scores otherwise, and so does normalising by tokens (not characters)
    s = first_case["arc_challenge"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": s["context"]}], tokenize=False,
                                         add_generation_prompt=True)
    assert abs(brute_force_ll(model, tokenizer, chat, s["choices"][0]) - s["lls"][0]) > 1e-2
    per_token = [np.argmax(np.array(r["lls"]) / [len(tokenizer(c, add_special_tokens=False)["input_ids"])
                                                 for c in r["choices"]]) for r in samples if "acc_norm" in r]
    per_char = [np.argmax(np.array(r["lls"]) / [len(c.strip()) for c in r["choices"]]) for r in samples if "acc_norm" in r]
    assert per_token != per_char

    # a re-run computes nothing and loads no model. To see acc and acc_norm part, each ARC and HellaSwag case's gold
    # answer becomes the choice acc_norm picks (a label is not part of its own case's prompt, so every request is
    # the same): acc_norm is then 1, acc is 1 only where the unnormalised pick is the same choice
    monkeypatch.setattr("longalign.generation.load_causal_lm", lambda *a, **k: pytest.fail("a re-run loaded the model"))
    picks = {(r["task"], r["doc_id"]): int(np.argmax(np.array(r["lls"]) / [len(c.strip()) for c in r["choices"]]))
             for r in samples if r["task"] in ("arc_challenge", "hellaswag")}
    for i, case in enumerate(arc_tests):
        case["answerKey"] = case["choices"]["label"][picks["arc_challenge", i]]
    (data_dir / "ai2_arc/ARC-Challenge/test.jsonl").write_text("".join(json.dumps(c) + "\n" for c in arc_tests))
    hs_cases = [c | {"label": str(picks["hellaswag", i])} for i, c in enumerate(rows("hellaswag/validation.jsonl"))]
    (data_dir / "hellaswag/validation.jsonl").write_text("".join(json.dumps(c) + "\n" for c in hs_cases))
    again = run(argv)
    assert again["computed"] == 0 and again["cached"] == first["computed"]
    assert len(read_jsonl(out / "loglikelihoods.jsonl")) == first["computed"]
    assert again["columns"]["arc"] == again["columns"]["hellaswag"] == 100.0
    assert (again["columns"]["truthfulqa"], again["columns"]["mmlu"]) == (cols["truthfulqa"], cols["mmlu"])
    relabelled = [r for r in read_jsonl(out / "samples.jsonl") if (r["task"], r["doc_id"]) in picks]
    for r in relabelled:
        assert (r["acc"], r["acc_norm"]) == (float(np.argmax(r["lls"]) == picks[r["task"], r["doc_id"]]), 1.0)
    assert any(r["acc"] != r["acc_norm"] for r in relabelled)  # seed 7: the HellaSwag cases
    print("after relabelling (acc, acc_norm):", [(r["task"], r["doc_id"], r["acc"], r["acc_norm"]) for r in relabelled])


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


# ---------------------------------------------------------------------------------------------
# Through an OpenAI-compatible completions server (lm-eval's local-completions client)

class CompletionsServer:
    """POST /v1/completions as vLLM answers lm-eval's log-likelihood requests (echo, logprobs 1, max_tokens 1): the
    prompt's token log-probabilities from the tiny model, one unbatched forward pass per prompt, then one greedy
    token. Records the payloads."""

    def __init__(self, model_dir):
        import http.server
        import threading

        import torch
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.payloads = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.payloads.append(payload)
                prompts = payload["prompt"] if isinstance(payload["prompt"][0], list) else [payload["prompt"]]
                choices = []
                for i, ids in enumerate(prompts):
                    with torch.no_grad():
                        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)  # (T, V)
                    best = logp.max(dim=-1)
                    token_logprobs = [None] + [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
                    top = [None] + [{str(int(best.indices[t - 1])): float(best.values[t - 1])} for t in range(1, len(ids))]
                    token_logprobs.append(float(best.values[-1]))  # the one generated token
                    top.append({str(int(best.indices[-1])): float(best.values[-1])})
                    choices.append({"index": i, "text": "", "logprobs": {"token_logprobs": token_logprobs,
                                                                           "top_logprobs": top}})
                body = json.dumps({"id": "x", "object": "text_completion", "choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_completions_server_gives_the_in_process_values(tiny_llama_dir, data_dir, tmp_path, capsys):
    pytest.importorskip("tenacity", reason="lm-eval's API client needs tenacity (requirements.txt): pip install -r requirements.txt")
    base = ["--model_name_or_path", str(tiny_llama_dir), "--data_dir", str(data_dir), "--tasks", "truthfulqa,mmlu",
            "--mmlu_subjects", "anatomy"]
    local = run(base + ["--output_dir", str(tmp_path / "local")])
    with CompletionsServer(tiny_llama_dir) as srv:
        served = run(base + ["--output_dir", str(tmp_path / "served"), "--gen_base_url", srv.base_url,
                             "--gen_model", "tiny"])
    assert served["computed"] == local["computed"] == sum(len(p["prompt"]) for p in srv.payloads) == 2 * 4 + 2 * 4
    assert len(srv.payloads) == 2  # --batch_size 8 prompts per request
    assert all((p["echo"], p["logprobs"], p["max_tokens"], p["model"]) == (True, 1, 1, "tiny") for p in srv.payloads)
    lls = {(r["task"], r["doc_id"]): r["lls"] for r in read_jsonl(tmp_path / "local" / "samples.jsonl")}
    for r in read_jsonl(tmp_path / "served" / "samples.jsonl"):
        assert np.allclose(r["lls"], lls[r["task"], r["doc_id"]], rtol=TOL, atol=0), r["task"]
    assert served["columns"] == pytest.approx(local["columns"], abs=1e-4)
    # a server that does not answer is one sentence, exit 2 (after lm-eval's progress bars, which stderr also holds)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(base + ["--output_dir", str(tmp_path / "dead"), "--gen_base_url", "http://127.0.0.1:9/v1", "--gen_model", "tiny"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: could not reach the server at http://127.0.0.1:9/v1")


def test_chatglm_checkpoint_in_process_and_special_tokens(glm_checkpoint, data_dir, tmp_path):  # noqa: F811
    """A chatglm-format checkpoint (no remote code) runs through longalign.models.load_model inside lm-eval's HFLM.
    Each choice's log-likelihood equals one forward pass of the same model on prompt + choice: without the tokenizer's
    special tokens by default (the leaderboard's harness), after ChatGLM3's [gMASK] sop with --add_special_tokens."""
    import torch

    from longalign.models import load_model
    from longalign.tokenization import load_tokenizer

    tok, model = load_tokenizer(str(glm_checkpoint)), load_model(str(glm_checkpoint), dtype=torch.float32).eval()
    specials = tok.convert_tokens_to_ids(["[gMASK]", "sop"])
    for flag in ("false", "true"):
        out = tmp_path / f"glm-{flag}"
        summary = run(["--model_name_or_path", str(glm_checkpoint), "--output_dir", str(out), "--data_dir",
                       str(data_dir), "--tasks", "truthfulqa", "--limit", "1", "--add_special_tokens", flag])
        assert summary["computed"] == 4 and 0 <= summary["columns"]["truthfulqa"] <= 100
        s, = read_jsonl(out / "samples.jsonl")
        for choice, ll in zip(s["choices"], s["lls"], strict=True):
            ctx = tok(s["context"], add_special_tokens=flag == "true")["input_ids"]
            whole = tok(s["context"] + choice, add_special_tokens=flag == "true")["input_ids"]
            assert (whole[:2] == specials) == (flag == "true") and whole[:len(ctx)] == ctx
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)  # (T, V)
            mine = sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
            assert abs(mine - ll) <= TOL * abs(mine), (flag, choice, mine, ll)
