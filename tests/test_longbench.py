"""LongBench/eval.py and longalign/harness.py: lm-eval's own LongBench tasks on our model.

- one value per group (S-Doc QA, M-Doc QA, Summ) computed by hand here equals lm-eval's, from a real run of
  the script on synthetic data whose answers are known in advance (the fault server's echo model answers
  "Answer: " + the last 80 characters of the prompt);
- a re-run generates nothing and writes the same scores; a changed prompt is generated again;
- LongBench's middle truncation through the real adapter keeps the head and the tail (lm-eval's own left
  truncation, the negative control, loses the head); special tokens counted as LongBench counts them;
- chatglm-format and Llama checkpoints run in-process; user errors are one line, exit 2;
- tools/synthetic_longbench.py writes LongBench's format, deterministic by seed, answers in the context.
"""

import json
import re
from pathlib import Path

import pytest
import script_module
from test_chat_demo import glm_checkpoint  # noqa: F401  (the tiny ChatGLM3-format checkpoint, a module fixture)

from longalign.harness import LongBenchLM, counts_special_tokens, lm_eval_groups, truncate_longbench
from longalign.scriptargs import run_main
from tools import synthetic_longbench
from tools.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
lb = script_module.load("LongBench/eval.py", "longbench_eval")

# Questions of 71 / 72 characters: with lm-eval's prompt endings "\n\nAnswer:" (9 characters, narrativeqa) and
# "\nAnswer:" (8, hotpotqa and qmsum) the echo's 80 characters are exactly question + ending.
NARRATIVE_Q = "Where did the blue ship of captain Moro anchor after the storm at night"
HOTPOT_Q = "Which city holds the archive copies that Rosa Almeida shipped from Porto"
QMSUM_Q = "What did our team decide about the remote control buttons and its colour"


def case(task: str, question: str, answers: list[str], context: str) -> dict:
    return {"input": question, "context": context, "answers": answers, "length": len(context.split()),
            "dataset": task, "language": "en", "all_classes": None, "_id": f"hand-{task}"}


@pytest.fixture()
def data_dir(tmp_path):
    """Synthetic LongBench files for the 12 tasks (1 case each); three replaced by hand-made cases."""
    out = synthetic_longbench.write_cases(tmp_path / "data", num_cases=1, context_words=60)
    hand = [case("narrativeqa", NARRATIVE_Q, ["Kell harbour", "the blue ship anchored at Kell harbour"],
                 "The blue ship anchored at Kell harbour after the storm."),
            case("hotpotqa", HOTPOT_Q, ["Lisbon", "Lisbon keeps the Porto copies"],
                 "Passage 1:\nArchive\nThe copies Rosa Almeida shipped from Porto are kept in Lisbon."),
            case("qmsum", QMSUM_Q, ["The team decided the remote control gets fewer buttons and a yellow colour"],
                 "Anna: Fewer buttons then.\nBen: And yellow.")]
    for row in hand:
        (out / f"{row['dataset']}.jsonl").write_text(json.dumps(row) + "\n")
    return out


def run(argv: list[str]) -> dict:
    return run_main(lb.main, argv)


def test_hand_checked_metrics_rerun_and_changed_prompt(data_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    with FaultServer() as srv:
        argv = ["--model_name_or_path", str(tokenizer_dir), "--output_dir", str(out), "--data_dir", str(data_dir),
                "--gen_base_url", srv.base_url, "--gen_model", "echo"]
        first = run(argv)
        assert srv.requests["echo"] == 12 and first["generated"] == 12 and first["num_docs"]["qmsum"] == 1
        assert first["truncated"] == 0

        rows = {r["task"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
        # the prediction known in advance: the prompt reached the model whole (no truncation at 64000)
        assert rows["longbench_narrativeqa"]["prediction"] == f"Answer: {NARRATIVE_Q}\n\nAnswer:"
        assert rows["longbench_qmsum"]["prediction"] == f"Answer: {QMSUM_Q}\nAnswer:"

        # S-Doc QA, narrativeqa, token F1 (lower case, no punctuation, no articles), best over the answers.
        # prediction: answer where did blue ship of captain moro anchor after storm at night answer  (14 tokens)
        # answer 2:   blue ship anchored at kell harbour                                            (6 tokens)
        # shared: blue, ship, at = 3 ("anchor" is not "anchored");  F1 = 2*3 / (14 + 6) = 0.3;  answer 1 shares 0
        assert first["tasks"]["narrativeqa"] == pytest.approx(100 * 2 * 3 / (14 + 6), abs=1e-9)
        # M-Doc QA, hotpotqa, token F1.
        # prediction: answer which city holds archive copies that rosa almeida shipped from porto answer  (13)
        # answer 2:   lisbon keeps porto copies  (4);  shared: porto, copies = 2;  F1 = 2*2 / (13 + 4) = 4/17
        assert first["tasks"]["hotpotqa"] == pytest.approx(100 * 2 * 2 / (13 + 4), abs=1e-9)
        # Summ, qmsum, Rouge-L F of the `rouge` package: case-sensitive words split on spaces, sentences on ".",
        # and it counts DISTINCT words (its n-gram bags are sets): "Answer:" twice counts once.
        # prediction: Answer: What did our team decide about the remote control buttons and its colour Answer:
        #             -> 14 distinct words
        # reference:  The team decided the remote control gets fewer buttons and a yellow colour -> 13 distinct
        # LCS: team the remote control buttons and colour = 7;  P = 7/14, R = 7/13, F = 2PR/(P+R) = 14/27
        # (the package adds 1e-8 to P+R: a relative 2e-8, hence the tolerance)
        assert first["tasks"]["qmsum"] == pytest.approx(100 * 14 / 27, abs=1e-5)

        # groups: unweighted means of the four tasks, ours and lm-eval's own
        groups = lm_eval_groups()
        for g, tasks in groups.items():
            mean = sum(first["tasks"][t] for t in tasks) / 4
            assert first["groups"][g] == pytest.approx(mean, abs=1e-9)
            assert first["lm_eval_groups"][g] == pytest.approx(mean, abs=1e-9)

        # a re-run of the same command generates nothing and writes the same scores
        srv.reset_counts()
        again = run(argv)
        assert srv.requests["echo"] == 0 and again["generated"] == 0 and again["cached"] == 12
        assert (again["tasks"], again["groups"]) == (first["tasks"], first["groups"])
        assert json.loads((out / "scores.json").read_text())["tasks"] == first["tasks"]

        # a changed question is a changed prompt: that case alone is generated again
        row = json.loads((data_dir / "narrativeqa.jsonl").read_text())
        row["input"] = "Where did it anchor"
        (data_dir / "narrativeqa.jsonl").write_text(json.dumps(row) + "\n")
        changed = run(argv + ["--groups", "single"])
        assert srv.requests["echo"] == 1 and changed["generated"] == 1 and changed["cached"] == 3
        assert list(changed["groups"]) == ["single"]


# ---------------------------------------------------------------------------------------------
# Truncation through the real adapter

class Recorder:
    """A Generator stand-in: the real tokenizer, records what the model would be sent."""

    template = "recorded"

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def generate(self, messages, max_new_tokens=None, temperature=None):
        self.calls.append((messages, max_new_tokens, temperature))
        return {"text": "an answer", "prompt_tokens": None}

    def generate_batch(self, conversations, max_new_tokens=None, temperature=None):
        return [self.generate(m, max_new_tokens, temperature) for m in conversations]


def request(context: str, task="longbench_narrativeqa", doc_id=0, max_gen_toks=128):
    from lm_eval.api.instance import Instance

    gen_kwargs = {"max_gen_toks": max_gen_toks, "temperature": 1, "do_sample": False, "until": []}  # as the YAMLs
    return Instance("generate_until", {"_id": f"id{doc_id}"}, (context, gen_kwargs), 0, (task, doc_id, 1))


def keeps_head_and_tail(text: str) -> bool:
    return text.startswith("HEADSTART w0 w1 w2") and text.endswith("w997 w998 w999 TAILEND") and " w500 " not in text


def test_truncation_keeps_head_and_tail_through_the_adapter(tokenizer, tmp_path):
    from longalign.generation import JsonlTable

    context = "HEADSTART " + " ".join(f"w{i}" for i in range(1000)) + " TAILEND"
    table = JsonlTable(tmp_path / "p.jsonl", key=lambda r: (r["task"], r["doc_id"], r["prompt_sha"]))
    rec = Recorder(tokenizer)
    lm = LongBenchLM(rec, max_length=101, table=table, max_new_tokens_cap=16)
    assert lm.generate_until([request(context)]) == ["an answer"]
    (messages, max_new, temperature), = rec.calls
    sent = messages[0]["content"]
    n_full = len(tokenizer(context)["input_ids"])
    assert keeps_head_and_tail(sent) and len(tokenizer(sent)["input_ids"]) <= 101
    assert (max_new, temperature) == (16, 0.0)  # the task's 128 capped; greedy
    row, = table.rows.values()
    assert (row["input_tokens"], row["truncated"], row["max_new_tokens"]) == (n_full, True, 16)
    # brute force: 101 // 2 = 50 tokens at each end, each half decoded on its own (LongBench's pred.py)
    ids = tokenizer(context)["input_ids"]
    assert sent == tokenizer.decode(ids[:50]) + tokenizer.decode(ids[-50:])
    # negative control: lm-eval's HFLM keeps the LAST tokens (left truncation): the head is gone
    assert not keeps_head_and_tail(tokenizer.decode(ids[-101:]))
    # a short prompt goes through untouched, and a second call is served from the table
    lm.generate_until([request("HEADSTART short TAILEND", doc_id=1)])
    assert rec.calls[-1][0][0]["content"] == "HEADSTART short TAILEND"
    lm.generate_until([request(context)])
    assert len(rec.calls) == 2 and lm.generated == 2 and lm.cached == 1


def test_batches_hold_one_answer_length_and_keep_the_order(tokenizer, tmp_path):
    """--batch_size 2: requests are batched by their task's answer length (one generate() length per batch), and
    every answer goes back to its own request."""
    from longalign.generation import JsonlTable
    from longalign.harness import LongBenchLM

    class Batches(Recorder):
        def generate_batch(self, conversations, max_new_tokens=None, temperature=None):
            self.calls.append((len(conversations), max_new_tokens))
            return [{"text": f"answer to {m[0]['content']}", "prompt_tokens": None} for m in conversations]

    table = JsonlTable(tmp_path / "p.jsonl", key=lambda r: (r["task"], r["doc_id"], r["prompt_sha"]))
    rec = Batches(tokenizer)
    lm = LongBenchLM(rec, max_length=100, table=table, batch_size=2)
    lengths = [32, 128, 32, 128, 32]
    requests = [request(f"doc {i}", doc_id=i, max_gen_toks=n) for i, n in enumerate(lengths)]
    assert lm.generate_until(requests) == [f"answer to doc {i}" for i in range(5)]
    assert sorted(rec.calls) == [(1, 32), (2, 32), (2, 128)]


def test_special_tokens_are_counted_as_longbench_counts_them(tmp_path):
    """pred.py counts a Llama tokenizer's <s> (then the decode drops it: the head keeps one text token less)
    and not ChatGLM3's [gMASK] sop (its chat builder adds them)."""
    import spm_fixtures as fx

    from longalign.generation import truncate_text_middle
    from longalign.tokenization import chatglm_tokenizer, llama_tokenizer

    model_file = fx.train_sentencepiece(tmp_path / "tokenizer.model", vocab_size=1000)
    llama, glm = llama_tokenizer(model_file), chatglm_tokenizer(model_file)
    assert counts_special_tokens(llama) and not counts_special_tokens(glm)
    text = "HEADSTART " + " ".join(f"w{i}" for i in range(300)) + " TAILEND"
    ids = llama(text)["input_ids"]
    assert ids[0] == llama.bos_token_id
    cut, n, truncated = truncate_longbench(text, llama, 40, special_tokens=True)
    assert (n, truncated) == (len(ids), True)
    assert cut == llama.decode(ids[1:20]) + llama.decode(ids[-20:])  # 19 text tokens + <s> at the head
    assert len(llama(cut)["input_ids"]) <= 40
    # negative control: LongBench-Chat's cut (longalign.generation) counts no <s> and decodes once: another text
    assert truncate_text_middle(text, llama, 40)[0] != cut
    cut_glm, n_glm, _ = truncate_longbench(text, glm, 40, special_tokens=counts_special_tokens(glm))
    assert n_glm == len(glm(text, add_special_tokens=False)["input_ids"]) == len(ids) - 1
    assert cut_glm.startswith("HEADSTART") and cut_glm.endswith("TAILEND")


# ---------------------------------------------------------------------------------------------
# In-process models: chatglm format and Llama

@pytest.mark.parametrize("kind", ["chatglm", "llama"])
def test_in_process_model(kind, glm_checkpoint, tiny_llama_dir, data_dir, tmp_path, monkeypatch):  # noqa: F811
    from longalign.generation import Generator
    from longalign.tokenization import load_tokenizer

    model = glm_checkpoint if kind == "chatglm" else tiny_llama_dir
    sent, generate = [], Generator.generate

    def spy(self, messages, **kwargs):
        sent.append((self.template, messages[0]["content"], kwargs))
        return generate(self, messages, **kwargs)

    monkeypatch.setattr(Generator, "generate", spy)
    summary = run(["--model_name_or_path", str(model), "--output_dir", str(tmp_path / "out"), "--data_dir",
                   str(data_dir), "--groups", "single", "--tasks", "narrativeqa,multifieldqa_zh",
                   "--max_length", "48", "--max_new_tokens_cap", "3"])
    assert summary["generated"] == summary["truncated"] == 2 and summary["groups"] == {} and set(summary["tasks"]) == {
        "narrativeqa", "multifieldqa_zh"}
    tok = load_tokenizer(str(model))
    for template, text, kwargs in sent:
        assert template == ("chatglm" if kind == "chatglm" else "chat_template")  # --template auto
        assert kwargs == {"max_new_tokens": 3, "temperature": 0.0}
        # A cut through a multi-byte character (the Chinese prompt, byte-level pieces) decodes to U+FFFD, which
        # re-encodes to more tokens than the bytes it replaces; LongBench's pred.py does the same.
        kept = text.replace("\ufffd", "")
        assert len(tok(kept, add_special_tokens=kind == "llama")["input_ids"]) <= 48
    # the head of lm-eval's narrativeqa prompt and its end survive the cut
    assert sent[0][1].startswith("You are given a story") and sent[0][1].endswith("Answer:")


# ---------------------------------------------------------------------------------------------
# User errors: one line, exit 2

def fails_with(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        run(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_user_errors(data_dir, tokenizer_dir, tmp_path, capsys):
    base = ["--model_name_or_path", str(tokenizer_dir), "--output_dir", str(tmp_path / "out"),
            "--data_dir", str(data_dir), "--gen_base_url", "http://127.0.0.1:9/v1", "--gen_model", "echo"]
    fails_with(capsys, base + ["--groups", "single,mult"], "unknown group 'mult'; pick from single,multi,summarization")
    fails_with(capsys, base + ["--tasks", "narativeqa"], "(did you mean narrativeqa?)")
    fails_with(capsys, base + ["--groups", "single", "--tasks", "hotpotqa"], "not a task of --groups single")
    fails_with(capsys, base[:-2], "--gen_base_url needs --gen_model")
    (data_dir / "vcsum.jsonl").unlink()
    fails_with(capsys, base, "has no vcsum.jsonl")
    (data_dir / "qasper.jsonl").write_text('{"input": "x", "context": "y"}\n{"input"\n')
    fails_with(capsys, base + ["--groups", "single"], "qasper.jsonl line 1 lacks answers")
    # without --data_dir lm-eval reads its hub copy: offline that is one sentence too
    fails_with(capsys, base[:4] + base[6:] + ["--tasks", "qasper"], "could not load its copy of LongBench from the hub")
    fails_with(capsys, ["--model_name_or_path", "./no/such/model", "--output_dir", str(tmp_path / "o")], "does not exist")


def test_rerun_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text(json.dumps({"task": "t", "doc_id": 0, "prompt_sha": "x"}) + "\n")
    (out / "settings.json").write_text(json.dumps({"generation": {k: None for k in lb.GENERATION_SETTINGS}}))
    fails_with(capsys, ["--model_name_or_path", str(tmp_path), "--output_dir", str(out)],
               "holds generation results made with --model_name_or_path None")


# ---------------------------------------------------------------------------------------------
# The synthetic data

def lookalikes(question: str, context: str, lang: str) -> tuple[str, list[tuple[str, str]]]:
    """(asked subject, every (subject, value) the context states in the question's fact shape)."""
    from tools import demo_data

    families = synthetic_longbench.ZH_FAMILIES if lang == "zh" else demo_data.FAMILIES
    subjects = "|".join(synthetic_longbench.ZH_SUBJECTS if lang == "zh" else demo_data.SUBJECTS)
    for statement, ask, _ in families.values():
        asked = re.fullmatch(re.escape(ask).replace(r"\{s\}", f"({subjects})"), question)
        if asked:
            shape = re.escape(statement).replace(r"\{s\}", f"({subjects})").replace(r"\{v\}", "(.+?)")
            return asked.group(1), re.findall(shape, context)
    raise AssertionError(f"no fact shape asks {question!r}")


def test_synthetic_cases_are_longbench_format_deterministic_and_answerable(tmp_path):
    groups = lm_eval_groups()
    assert list(synthetic_longbench.TASKS) == [t for g in groups.values() for t in g]  # lm-eval's 12, in order
    a = synthetic_longbench.write_cases(tmp_path / "a", num_cases=3, context_words=80, seed=5)
    b = synthetic_longbench.write_cases(tmp_path / "b", num_cases=3, context_words=80, seed=5)
    c = synthetic_longbench.write_cases(tmp_path / "c", num_cases=3, context_words=80, seed=6)
    for task, (lang, kind) in synthetic_longbench.TASKS.items():
        text = (a / f"{task}.jsonl").read_text(encoding="utf-8")
        assert text == (b / f"{task}.jsonl").read_text(encoding="utf-8")
        assert text != (c / f"{task}.jsonl").read_text(encoding="utf-8")
        for row in map(json.loads, text.splitlines()):
            assert set(row) == {"input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"}
            assert (row["dataset"], row["language"], row["all_classes"]) == (task, lang, None)
            assert bool(row["input"]) == (kind in ("qa", "passages", "query"))
            answer, = row["answers"]
            if kind in ("qa", "passages"):  # one fact among 3-6 look-alikes of its shape, each subject once
                subject, facts = lookalikes(row["input"], row["context"], lang)
                value = dict(facts)[subject]
                assert 3 <= len(facts) == len(dict(facts)) <= 6
                assert answer == value or (task == "dureader" and value in answer and answer in row["context"])
            else:  # every sentence of the reference summary is stated in the context
                sentences = re.findall(r"[^。.]+[。.]", answer.removeprefix("会议确定："))
                assert len(sentences) == 3 and all(s.strip() in row["context"] for s in sentences)
