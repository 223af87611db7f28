"""scripts/eval_all.py: the evaluation table in one command (nine columns and the Needle test). The stages run as the real scripts (subprocesses)
on a tiny model against the local fault server as judge; the table's cells equal the stages' own files, a
re-run generates and judges nothing, bad input stops before any work, and --compare / the paper's rows."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import script_module

from longalign.scriptargs import run_main
from tools import synthetic, synthetic_eval, synthetic_general, synthetic_longbench, synthetic_mt_bench
from tools.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
eval_all = script_module.load("scripts/eval_all.py", "eval_all")

# LongBench-Chat case i is rated (3i mod 10) + 1 by the fault server: 4, 7, 10 -> mean 7.0.
LBC_SCORES = {i: (3 * i) % 10 + 1 for i in (1, 2, 3)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_all_inputs")
    synthetic_eval.write_cases(tmp / "lbc", num_cases=3, min_words=40, markers={i: (s, ()) for i, s in LBC_SCORES.items()})
    synthetic.write_haystack(tmp / "haystack", num_files=1, words_per_file=800)
    synthetic_longbench.write_cases(tmp / "longbench", num_cases=1, context_words=60)
    synthetic_mt_bench.write_mt_bench(tmp / "mt_bench", 8)  # turn t of question i rated planned_score(2i + t)
    synthetic_general.write_cases(tmp / "general", num_cases=1, mmlu_subjects=("anatomy", "virology"))
    return tmp


def command(model, out, base_url, inputs, stages="lbc,longbench,mt_bench,general,needle", *extra):
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--only", stages,
            "--judge_base_url", base_url, "--judge_model", "fault", "--lbc_data_dir", str(inputs / "lbc"),
            "--lbc_args", "--max_new_tokens 4 --temperature 0 --judge_runs 1", "--haystack_dir", str(inputs / "haystack"),
            "--needle_prompt_args", "--context_lengths 300,400 --depth_percents 0,100 --final_context_length_buffer 100",
            "--needle_pred_args", "--max_new_tokens 4", "--needle_eval_args", "--scorer match",
            "--longbench_data_dir", str(inputs / "longbench"), "--longbench_args", "--max_new_tokens_cap 4",
            "--mt_bench_dir", str(inputs / "mt_bench"), "--mt_bench_args", "--max_new_tokens 4",
            "--general_data_dir", str(inputs / "general"), "--general_args", "--mmlu_subjects anatomy,virology", *extra]


def run(argv, env_key=True):
    """The driver as `python scripts/eval_all.py ...` runs it: a real process, its stages real subprocesses."""
    import os

    env = dict(os.environ)
    if env_key:
        env["OPENAI_API_KEY"] = "local"
    else:
        env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_all.py"), *argv], env=env,
                          capture_output=True, text=True)


@pytest.fixture
def in_process(monkeypatch, capsys):
    """The driver in this process with --in_process (its stages run through runpy, as `python SCRIPT ...` would
    run them: the same scripts and files without a new interpreter per stage). Returns run(argv) -> stdout."""
    monkeypatch.setenv("OPENAI_API_KEY", "local")

    def run_driver(argv):
        eval_all.main([*argv, "--in_process", "true"])
        return capsys.readouterr().out

    return run_driver


def test_table_equals_the_stages_files_and_a_rerun_does_nothing(tiny_llama_dir, inputs, tmp_path, in_process):
    out = tmp_path / "run"
    with FaultServer() as srv:
        in_process(command(tiny_llama_dir, out, srv.base_url, inputs))
        asked = sum(srv.requests.values())
        srv.reset_counts()
        again = in_process(command(tiny_llama_dir, out, srv.base_url, inputs))
        assert sum(srv.requests.values()) == 0  # nothing judged again
    # one judgement per LongBench-Chat case, two per MT-Bench turn (the paper's setting); LongBench's metrics
    # and the Needle's match scorer ask nobody
    assert asked == 3 + 8 * 2 * 2
    assert "predictions: 3 done, 0 to generate" in again and "needle predictions: 4 done, 0 to generate" in again
    assert "answers: 8 done, 0 to generate" in again and "this run generated 0, served 12" in again
    assert "log-likelihoods: 20 cached, 0 to compute" in again and "this run computed 0 log-likelihoods" in again
    assert "was made by this same command: kept" in again  # the needle prompts are not rebuilt

    res = json.loads((out / "results.json").read_text())
    lbc = json.loads((out / "lbc" / "scores.json").read_text())
    needle = json.loads((out / "needle" / "summary.json").read_text())
    assert res["scores"]["lbc"] == lbc["mean"] == pytest.approx(sum(LBC_SCORES.values()) / 3)
    assert res["scores"]["needle"] == needle["mean"] and needle["num_scored"] == 4
    lb = json.loads((out / "longbench" / "scores.json").read_text())["groups"]
    mt = json.loads((out / "mt_bench" / "scores.json").read_text())
    assert [res["scores"][g] for g in ("single", "multi", "summarization")] == [lb[g] for g in ("single", "multi", "summarization")]
    planned = [synthetic_mt_bench.planned_score(c) for c in range(1, 17)]
    assert res["scores"]["mt_bench"] == mt["mean"] == pytest.approx(sum(planned) / 16) and mt["num_scored"] == 16
    assert res["paper"] is None
    assert [s["status"] for s in res["stages"].values()] == ["done"] * 5
    assert all(len(s["seconds_per_run"]) == 2 for s in res["stages"].values())
    md = (out / "results.md").read_text()
    general = json.loads((out / "general" / "scores.json").read_text())
    short = [general["columns"][k] for k in ("arc", "hellaswag", "truthfulqa", "mmlu")]
    assert [res["scores"][k] for k in ("arc", "hellaswag", "truthfulqa", "mmlu")] == short
    assert general["columns"]["mmlu"] == sum(general["mmlu_subjects"].values()) / 2  # anatomy, virology
    row = [lbc["mean"], lb["single"], lb["multi"], lb["summarization"], mt["mean"], *short, needle["mean"]]
    assert "| run | " + " | ".join(f"{x:.{1 if i in (1, 2, 3, 5, 6, 7, 8) else 2}f}" for i, x in enumerate(row)) + " |" in md
    assert "lbc: fault" in md and "mt_bench: fault" in md and "needle: match scorer" in md

    # --compare: one row per folder, then the paper's Table 3 for reference
    table = in_process(["--compare", str(out), str(out)])
    assert table.count(f"| run | {lbc['mean']:.2f} |") == 2
    assert "| ChatGLM3-6B-64k: pack + loss weighting | 6.21 | 64.0 | 44.4 | 44.2 | 5.50 | – | – | – | – | – |" in table
    assert "| model | LongBench-Chat | S-Doc QA | M-Doc QA | Summ | MT-Bench | ARC | HellaSwag | TruthfulQA | MMLU | Needle |" in table


def test_a_family_served_by_any_model(tiny_qwen3_dir, inputs, tmp_path, in_process):
    """The same stages, unchanged, on a family without a model file of ours (a tiny Qwen3 through
    longalign/any_model.py) whose tokenizer has a Qwen3-style thinking template: MT-Bench's second turns hold the
    first answer as history. Every stage runs and the table holds their scores."""
    out = tmp_path / "qwen3"
    with FaultServer() as srv:
        in_process(command(tiny_qwen3_dir, out, srv.base_url, inputs, "lbc,longbench,mt_bench,needle"))
    res = json.loads((out / "results.json").read_text())
    assert [s["status"] for s in res["stages"].values()] == ["done"] * 4
    assert res["scores"]["lbc"] == pytest.approx(sum(LBC_SCORES.values()) / 3)
    assert all(res["scores"][k] is not None for k in ("single", "multi", "summarization", "mt_bench", "needle"))


def test_user_errors_stop_before_any_work(tiny_llama_dir, inputs, tmp_path, in_process, monkeypatch):
    out = tmp_path / "run"
    no_key = run(command(tiny_llama_dir, out, "http://127.0.0.1:9/v1", inputs), env_key=False)
    assert no_key.returncode == 2 and not out.exists(), no_key.stdout[-3000:]
    assert no_key.stderr.strip().splitlines()[-1].startswith("error: OPENAI_API_KEY is not set")
    # LongBench's metrics and the Needle's match scorer need no judge: those two run without a key
    monkeypatch.delenv("OPENAI_API_KEY")
    in_process(command(tiny_llama_dir, out, "http://127.0.0.1:9/v1", inputs, "longbench,needle"))
    # a stage that fails stops the run with one sentence; what finished is kept (a real stage subprocess)
    bad = run(command(tiny_llama_dir, out, "http://127.0.0.1:9/v1", inputs, "lbc", "--lbc_data_dir", str(tmp_path / "nope")))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: stage lbc failed (exit 2")
    res = json.loads((out / "results.json").read_text())
    assert res["stages"]["lbc"]["status"] == "failed (exit 2)"
    assert res["stages"]["needle"]["status"] == res["stages"]["longbench"]["status"] == "done"
    for argv, message in ((["--output_dir", str(out)], "--model_name_or_path is required"),
                          (["--output_dir", str(out), "--model_name_or_path", str(tiny_llama_dir), "--only", "lbc,mmlu"],
                           "--only mmlu is not a stage"),
                          (["--compare", str(tmp_path / "none")], "results.json does not exist")):
        with pytest.raises(SystemExit) as e:
            run_main(eval_all.main, argv)
        assert e.value.code == 2, message


def test_paper_rows_of_the_released_models():
    """The paper's published numbers beside a released model's row (Table 3 / Table 4 of arXiv 2401.18058)."""
    assert eval_all.paper_row("THUDM/LongAlign-6B-64k") == ("paper, Table 3: pack + loss weighting",
                                                            (6.21, 64.0, 44.4, 44.2, 5.5, None, None, None, None))
    # the four short-task values (ARC, HellaSwag, TruthfulQA, MMLU) are not recorded yet (scripts/eval_all.py says why)
    assert eval_all.paper_row("/models/LongAlign-7B-64k/")[1][:5] == (6.38, 63.4, 42.2, 41.3, 5.51)
    assert eval_all.paper_row("THUDM/LongAlign-13B-64k")[1][:5] == (7.02, 66.1, 43.9, 45.3, 6.02)
    assert all(len(row) == 9 for table in eval_all.PAPER.values() for row in table.values())
    assert eval_all.paper_row("THUDM/LongAlign-7B-64k-base") is None  # the base model was not evaluated
    md = eval_all.results_markdown("7b", "THUDM/LongAlign-7B-64k", {"lbc": 6.0}, "lbc: gpt-4")
    assert "| paper, Table 3: sort | 6.38 | 63.4 | 42.2 | 41.3 | 5.51 | – | – | – | – | – |" in md
