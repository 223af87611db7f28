"""Every entry script's command line: --help exits 0 and starts with the script's docstring; a misspelled flag
exits 2 with one line that names the flag meant; a missing required flag is one line too.

The scripts run in-process (runpy, as `python SCRIPT ...` would run them) so that each costs milliseconds.
"""

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> (a misspelled flag, the flag it should suggest)
SCRIPTS = {
    "pre_tokenize.py": ("--modle", "--model_name_or_path"),
    "sort_and_group.py": ("--grup_size", "--group_size"),
    "train.py": ("--bach_method", "--batch_method"),
    "scripts/download_data.py": ("--sharegtp", "--sharegpt"),
    "scripts/chat_demo.py": ("--tempalte", "--template"),
    "LongBench_Chat/eval.py": ("--max_lenght", "--max_length"),
    "MT_Bench/eval.py": ("--max_new_tokns", "--max_new_tokens"),
    "LongBench/eval.py": ("--max_new_tokens_cpa", "--max_new_tokens_cap"),
    "OpenLLM/eval.py": ("--mmlu_subject", "--mmlu_subjects"),
    "Needle_test/prompt.py": ("--needel", "--needle"),
    "Needle_test/pred.py": ("--max_new_tokns", "--max_new_tokens"),
    "Needle_test/eval.py": ("--scorrer", "--scorer"),
    "Needle_test/vis.py": ("--titel", "--title"),
    "bench/bench_batching.py": ("--repets", "--repeats"),
    "bench/bench_model.py": ("--repets", "--repeats"),
    "bench/bench_sp_memory.py": ("--chek_tokens", "--check_tokens"),
    "bench/bench_packing.py": ("--grup_size", "--group_size"),
    "bench/bench_tokenize.py": ("--repets", "--repeats"),
    "bench/bench_host_syncs.py": ("--tre", "--tree"),
    "bench/bench_gpu.py": ("--time_budjet", "--time_budget"),
    "bench/bench_generation.py": ("--num_prompt", "--num_prompts"),
    "-m longalign.tokenization": ("--kidn", "--kind"),
    "tools/synthetic.py": ("--num_lng", "--num_long"),
    "tools/demo_data.py": ("--num_lbcs", "--num_lbc"),
    "tools/synthetic_eval.py": ("--num_case", "--num_cases"),
    "tools/synthetic_mt_bench.py": ("--num_question", "--num_questions"),
    "tools/synthetic_longbench.py": ("--context_word", "--context_words"),
    "tools/synthetic_general.py": ("--num_case", "--num_cases"),
    "tools/fault_server.py": ("--prot", "--port"),
    "tools/rubric_judge.py": ("--prot", "--port"),
    "tools/needle_check.py": ("--depth", "--depths"),
    "scripts/eval_all.py": ("--lbc_dat_dir", "--lbc_data_dir"),
    "scripts/reproduce.py": ("--sedes", "--seeds"),
    "tools/miniature_data.py": ("--num_shrot", "--num_short"),
}


def source(script: str) -> Path:
    """The file of a script path or of `-m package.module`."""
    return ROOT / (script.removeprefix("-m ").replace(".", "/") + ".py" if script.startswith("-m ") else script)


def run_script(script: str, *args: str, monkeypatch) -> int:
    """Run ROOT/script (or `-m module`) as __main__ with these arguments -> its exit code (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.chdir(ROOT)
    try:
        if script.startswith("-m "):  # as `python -m` runs it: a fresh module, not the one tests imported
            monkeypatch.delitem(sys.modules, script.removeprefix("-m "), raising=False)
            runpy.run_module(script.removeprefix("-m "), run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_the_docstring_and_exits_0(script, monkeypatch, capsys):
    assert run_script(script, "--help", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    first_line = source(script).read_text(encoding="utf-8").split('"""')[1].strip().splitlines()[0]
    assert first_line in out, out[:500]
    assert "(default: " in out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_misspelled_flag_is_one_line_with_the_flag_meant(script, monkeypatch, capsys):
    wrong, meant = SCRIPTS[script]
    assert run_script(script, wrong, "1", monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: unrecognized argument {wrong} (did you mean {meant}?)", err


def test_missing_required_flag_is_one_line(monkeypatch, capsys):
    assert run_script("sort_and_group.py", monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err.strip() == "error: --train_dir is required (see --help)"


def test_help_shows_the_config_files_values(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("needle: The key is 4821.\n")
    assert run_script("Needle_test/prompt.py", "--config", str(config), "--help", monkeypatch=monkeypatch) == 0
    assert "(default: The key is 4821.)" in " ".join(capsys.readouterr().out.split())  # unwrapped
