"""The mistakes a new user makes, table-driven: command -> exit code -> the key words of its one-line message,
and nothing written where the command would have written. Also: the match scorer's key phrase defaults to the
needle of the prompts (not a phrase pinned in a config file), and the older flag names parse to the same values.

Every command runs in-process (runpy, as `python SCRIPT ...` would run it) and fails before it loads a model.
"""

import json
from pathlib import Path

import pytest
import script_module
from test_cli import ROOT, run_script

from longalign.scriptargs import parse_args

NEEDLE = "The secret code of Zorbalin is 4821."


@pytest.fixture()
def files(tmp_path):
    """A LongBench-Chat data folder of one case and Needle predictions for a custom needle (no model needed)."""
    data = tmp_path / "lbc"
    data.mkdir()
    (data / "test_cases.json").write_text(json.dumps([{"idx": 1, "prompt": "A document.", "query": "What?",
                                                       "answer": "That."}]))
    (data / "few_shots.json").write_text(json.dumps([[{"answer": "a", "score": s} for s in (1, 5, 10)]]))
    (data / "prompt_fs.txt").write_text(" ".join(["{}"] * 9))
    pred = tmp_path / "pred" / "predictions.jsonl"
    pred.parent.mkdir()
    rows = [{"context_length": 1000, "depth_percent": d, "needle": NEEDLE, "retrieval_question": "The code?",
             "prediction": answer} for d, answer in ((0, NEEDLE), (50, "I do not know."))]
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


# (script, arguments ({t}: the test's folder), exit code, key words of the message, a path that must not exist)
MISTAKES = [
    ("train.py", ["--bach_method", "pack"], 2,
     ["unrecognized argument --bach_method", "did you mean --batch_method?"], None),
    ("sort_and_group.py", ["--grup_size", "8"], 2, ["unrecognized argument --grup_size", "--group_size?"], None),
    ("train.py", ["--model_name_or_path", "/nope", "--train_dir", "{t}/store", "--output_dir", "{t}/run"], 2,
     ["--model_name_or_path /nope does not exist", "model folder"], "{t}/run"),
    ("train.py", ["--model_name_or_path", "{t}", "--train_dir", "{t}/store", "--output_dir", "{t}/run"], 2,
     ["has no config.json"], "{t}/run"),
    ("train.py", ["--model_name_or_path", "/nope", "--train_dir", "{t}/store"], 2,
     ["--output_dir is required"], "trainer_output"),
    ("train.py", ["--model_name_or_path", "/nope", "--train_dir", "{t}/store", "--output_dir", "{t}/run",
                  "--remove_unused_columns", "true"], 2, ["--remove_unused_columns", "leave it false"], "{t}/run"),
    ("train.py", ["--model_name_or_path", "/nope", "--train_dir", "{t}/store", "--output_dir", "{t}/run",
                  "--pack_loss"], 2, ["--pack_loss", "--batch_method pack"], "{t}/run"),
    ("pre_tokenize.py", ["--model", "/nope", "--output_dir", "{t}/store"], 2,
     ["--model_name_or_path /nope does not exist"], "{t}/store"),
    ("LongBench_Chat/eval.py", ["--model_name_or_path", "/nope", "--data_dir", "{t}/lbc", "--output_dir",
                                "{t}/lbc_out"], 2, ["OPENAI_API_KEY is not set", "--do_judge false"], "{t}/lbc_out"),
    ("Needle_test/eval.py", ["--predictions_file", "{t}/pred/predictions.jsonl", "--scorer", "match",
                             "--key_phrase", "temple garden"], 2,
     ["--key_phrase 'temple garden' does not occur in the needle", "or none to match the whole needle"],
     "{t}/pred/scores.jsonl"),
    ("Needle_test/prompt.py", ["--help"], 0, [], None),  # a bare % in a help string once crashed --help
    ("-m longalign.tokenization", ["/nope/tokenizer.model", "{t}/tok"], 2,
     ["--model_file /nope/tokenizer.model does not exist"], "{t}/tok"),
]


@pytest.mark.parametrize("script, args, code, words, unwritten", MISTAKES,
                         ids=[f"{m[0]} {' '.join(m[1][:2])}" for m in MISTAKES])
def test_mistake_is_one_sentence_before_anything_is_written(script, args, code, words, unwritten, files,
                                                            monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fill = lambda s: s.replace("{t}", str(files))  # noqa: E731
    assert run_script(script, *map(fill, args), monkeypatch=monkeypatch) == code
    err = capsys.readouterr().err
    if code:
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert all(w in err for w in words), err
    if unwritten:
        assert not (ROOT / fill(unwritten)).exists()


def test_key_phrase_defaults_to_the_needle_of_the_prompts(files, monkeypatch):
    """With a custom needle and no --key_phrase, an answer equal to the needle scores 10 under the shipped
    config-eval.yaml (it once pinned `key_phrase: temple garden`, the default needle's, and scored it 1)."""
    needle_eval = _module("Needle_test/eval.py")
    monkeypatch.chdir(ROOT)  # the script's own config file, as a user runs it
    summary = needle_eval.main(["--predictions_file", str(files / "pred" / "predictions.jsonl"), "--scorer", "match"])
    assert summary["mean"] == (10 + 1) / 2
    rows = [json.loads(x) for x in (files / "pred" / "scores.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [10, 1] and {r["key_phrase"] for r in rows} == {NEEDLE}


def _module(script: str):
    return script_module.load(script, Path(script).stem + "_under_test")


# script -> (the flags as docs/cli.md spells them, the older spellings that must mean the same)
ALIASES = {
    "pre_tokenize.py": (["--model_name_or_path", "llama", "--output_dir", "o"], ["--model", "llama", "--out_dir", "o"]),
    "sort_and_group.py": (["--train_dir", "d"], ["--train_file", "d"]),
    "train.py": (["--model_name_or_path", "m", "--train_dir", "d", "--output_dir", "o"],
                 ["--model", "m", "--train_file", "d", "--out_dir", "o"]),
    "LongBench_Chat/eval.py": (["--model_name_or_path", "m", "--output_dir", "o"], ["--model_path", "m", "--out_dir", "o"]),
    "Needle_test/pred.py": (["--model_name_or_path", "m", "--output_dir", "o"], ["--model_path", "m", "--out_dir", "o"]),
    "Needle_test/prompt.py": (["--tokenizer", "t", "--output_dir", "o"], ["--tokenizer", "t", "--out_dir", "o"]),
    "Needle_test/eval.py": (["--output_dir", "o"], ["--out_dir", "o"]),
    "Needle_test/vis.py": (["--output_file", "h.png"], ["--out", "h.png"]),
    "scripts/download_data.py": (["--output_dir", "o"], ["--out_dir", "o"]),
    "bench/bench_batching.py": (["--output_dir", "o"], ["--out_dir", "o"]),
    "bench/bench_sp_memory.py": (["--output_file", "p.png"], ["--out", "p.png"]),
}


def _dataclasses(module) -> tuple:
    if hasattr(module, "LongAlignTrainingArguments"):
        return module.ModelArguments, module.DataArguments, module.LongAlignTrainingArguments
    return (getattr(module, "Args", None) or module.BenchArgs,)


@pytest.mark.parametrize("script", sorted(ALIASES))
def test_older_flag_names_parse_to_the_same_values(script, monkeypatch):
    monkeypatch.chdir(ROOT)  # scripts with a config file read theirs
    module = _module(script)
    config = getattr(module, "CONFIG", None)
    new, old = ALIASES[script]
    assert parse_args(_dataclasses(module), new, default_config=config) == \
        parse_args(_dataclasses(module), old, default_config=config)


def test_older_names_work_as_config_keys(tmp_path, monkeypatch):
    """A config YAML written with today's older key (model_path, out_dir) still reads, as the new flag."""
    pred = _module("Needle_test/pred.py")
    config = tmp_path / "c.yaml"
    config.write_text("model_path: some/model\nout_dir: runs/x\n")
    (args,) = parse_args((pred.Args,), ["--config", str(config)])
    assert (args.model_name_or_path, args.output_dir) == ("some/model", "runs/x")


@pytest.mark.parametrize("supported", [False, True], ids=["no-fp16-cpu", "fp16-cpu"])
def test_fp16_on_a_cpu_without_it_stops_before_any_work(supported, tmp_path, monkeypatch, capsys):
    """On an AVX2-only x86-64 oneDNN has no float16, DeepSpeed's CPU accelerator refuses it at its first step
    ("Type fp16 is not supported on your device"): train.py says so first, in one sentence. The accelerator's
    check is replaced by a double either way, so the test means the same on every CPU; the control (a CPU with
    fp16) goes past the check and stops at the next missing input instead."""
    import train

    monkeypatch.setattr(train, "cpu_supports_fp16", lambda: supported)
    argv = ["--model_name_or_path", "/nope", "--train_dir", str(tmp_path / "store"), "--output_dir",
            str(tmp_path / "run"), "--fp16", "true", "--use_cpu", "true"]
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    if supported:
        assert "--model_name_or_path /nope does not exist" in err, err
    else:
        assert "--fp16 needs a CPU with float16 support" in err and "--bf16 true" in err, err
    assert not (tmp_path / "run").exists()
