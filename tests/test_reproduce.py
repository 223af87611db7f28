"""scripts/reproduce.py: Tables 2 and 3 in one command. The driver runs the real scripts (subprocesses) on the tiny
model with the miniature preset, two rows of Table 3, a couple of steps each: a row killed mid-training resumes
and the finished row is not redone; a re-run runs nothing; the table equals its stages' files; bad input is one
sentence. The paper preset is checked by the commands it would launch (a GPU node's launchers)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import script_module

ROOT = Path(__file__).resolve().parents[1]
reproduce = script_module.load("scripts/reproduce.py", "reproduce")

# tiny data and stages: 4 training sequences, 2 held-out cases per chat task, one 300-token Needle cell
FAST = ["--preset", "miniature", "--table", "3", "--rows", "naive,pack_loss", "--seeds", "0", "--num_sequences", "4",
        "--data_args", "--long_min_words 20 --num_eval 2 --lbc_min_words 40",
        "--train_args", "--max_steps 2",
        "--eval_args", "--only needle --needle_prompt_args '--config Needle_test/config-quickstart-prompt.yaml "
                       "--context_lengths 300 --depth_percents 50 "
                       "--final_context_length_buffer 50' --needle_pred_args '--max_new_tokens 4'"]


def driver(*argv) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "reproduce.py"), *map(str, argv)]


def executed(stdout: str) -> list[str]:
    """The steps that ran a command (a skipped step prints 'done before, skipped')."""
    return [line.split(":")[0] for line in stdout.splitlines()
            if line.startswith("[reproduce] ") and "done before, skipped" not in line]


def test_killed_row_resumes_a_rerun_runs_nothing_and_the_table_is_the_stages_files(tiny_llama_dir, tmp_path):
    out = tmp_path / "repro"
    argv = driver("--output_dir", out, "--base_model", tiny_llama_dir, *FAST)

    # 1. killed while the second row trains: the first row is finished, the second has no marker
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[reproduce] train pack_loss"):
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert any(x.startswith("[reproduce] eval naive") for x in seen), "".join(seen[-20:])
    assert not (out / "runs" / "5k-pack-loss-s0" / "reproduce-train.json").exists()

    # 2. the same command: only the killed row's steps run
    second = subprocess.run(argv, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ran = executed(second.stdout)
    assert ran == ["[reproduce] train pack_loss seed 0 (5k-pack-loss-s0)",
                   "[reproduce] eval pack_loss (5k-pack-loss-s0)", "[reproduce] eval pack_loss (5k-pack-loss-s0)"], ran

    # 3. the table is its stages' files: every cell, the seconds, the speed ratio
    table = json.loads((out / "table3.json").read_text())
    for row, run in (("naive", "5k-naive-s0"), ("pack_loss", "5k-pack-loss-s0")):
        run_dir = out / "runs" / run
        (entry,) = table["rows"][row]["seeds"]
        scores = json.loads((run_dir / "eval" / "results.json").read_text())["scores"]
        short = json.loads((run_dir / "eval_short" / "results.json").read_text())["scores"]["lbc"]
        assert entry["scores"] == {**scores, "short_chat": short}
        assert entry["train_seconds"] == json.loads((run_dir / "model" / "train_results.json").read_text())["train_runtime"]
        assert table["rows"][row]["needle"] == [scores["needle"], None]  # one seed: a mean, no spread
    md = (out / "table3.md").read_text()
    naive_s, loss_s = (table["rows"][r]["train_seconds"][0] for r in ("naive", "pack_loss"))
    assert f"| {naive_s:.0f} | 1.00x |" in md and f"| {loss_s:.0f} | {naive_s / loss_s:.2f}x |" in md
    assert "| pack + loss weighting | 6.21 |" in md  # the paper's row beside ours
    assert f"- packing trains faster than naive (Figure 5): train_seconds, naive - pack_loss = {naive_s - loss_s:+.2f}: " \
           "**cannot tell (one seed)**" in md
    assert (out / "runs" / "5k-pack-loss-s0" / "model" / "train_results.json").is_file()

    # 4. once more: nothing runs, the same table
    third = subprocess.run(argv, capture_output=True, text=True)
    assert third.returncode == 0 and executed(third.stdout) == [], third.stdout[-2000:]
    assert json.loads((out / "table3.json").read_text()) == table


@pytest.mark.parametrize("flags, message", [
    (["--rows", "naive,fast"], "--rows fast is not a row of Table 3; pick from naive,sort,pack,pack_loss"),
    (["--table", "4"], "--table 4 is not reproduced here; pick 2 or 3"),
    (["--base_model", "./no-such-model"], "--base_model ./no-such-model does not exist; pass a model folder or hub id"),
])
def test_bad_input_is_one_sentence_before_any_work(tmp_path, flags, message):
    res = subprocess.run(driver("--output_dir", tmp_path / "out", *flags), capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].endswith(message), res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_paper_rows_run_their_launchers_with_the_row_and_seed_last(tmp_path):
    """On a GPU node each row is its launcher (the paper's settings) with the driver's folders and seed last."""
    for family, name in (("chatglm", "chatglm3_6b"), ("llama", "llama2_7b")):
        args = reproduce.Args(output_dir=str(tmp_path), family=family)
        for row, (_, method, pack_loss) in reproduce.ROWS[3].items():
            cmd = reproduce.train_command(args, row, method, pack_loss, tmp_path / "plan", tmp_path / "model", 42)
            launcher = ROOT / "scripts" / f"train_{name}_{row}.sh"
            assert cmd[:2] == ["bash", str(launcher)] and cmd[-2:] == ["--seed", "42"]
            assert launcher.read_text().rstrip().endswith('"$@"')  # the driver's flags come last and win
    tok = reproduce.tokenize_command(reproduce.Args(output_dir=str(tmp_path), table=2), tmp_path, "5k")[0]
    assert tok[tok.index("--datanum") + 1] == "5k" and tok[tok.index("--template") + 1] == "chatglm"


def test_a_finding_counts_only_beyond_twice_its_standard_error():
    """sd 1 on 3 seeds each side: 2 SE = 2 * sqrt(1/3 + 1/3) = 1.633."""
    verdict = reproduce.verdict
    assert verdict([2, 3, 4], [0, 1, 2], "gain") == (2.0, pytest.approx(1.633, abs=1e-3), "reproduces")
    assert verdict([1, 2, 3], [0, 1, 2], "gain")[2] == "cannot tell"  # +1.0 < 1.633
    assert verdict([0, 1, 2], [2, 3, 4], "gain")[2] == "the opposite"
    assert verdict([0, 1, 2], [2, 3, 4], "keep")[2] == "does not: lower"
    assert verdict([1, 2, 3], [0, 1, 2], "keep")[2] == "reproduces: no drop beyond 2 SE"
    assert verdict([5.0], [1, 2], "gain") == (3.5, None, "cannot tell (one seed)")
