"""The paper's evaluation table in one command: LongBench-Chat, LongBench's S-Doc QA / M-Doc QA / Summ,
MT-Bench, the general tasks (ARC, HellaSwag, TruthfulQA, MMLU) and the Needle test, one resumable run, one table.

Run as:
    OPENAI_API_KEY=... python scripts/eval_all.py --model_name_or_path THUDM/LongAlign-7B-64k \
        --output_dir runs/eval/longalign-7b --lbc_data_dir data/longbench_chat [--only lbc,longbench,mt_bench,general,needle]
    python scripts/eval_all.py --compare runs/eval/naive runs/eval/sort runs/eval/pack runs/eval/pack_loss

Each stage is the benchmark's own script, run as a subprocess (or, --in_process, in this process) with the
paper's settings and writing into its own folder under --output_dir; each is resumable (a re-run generates and judges only what is missing), so
re-running the same command after an interruption finishes the table:

    stage      script(s)                                  score in the table
    lbc        LongBench_Chat/eval.py                     mean GPT-4 rating 1-10, each answer judged twice
    longbench  LongBench/eval.py (lm-evaluation-harness)  S-Doc QA, M-Doc QA, Summ: LongBench's metrics, 0-100
    mt_bench   MT_Bench/eval.py                           mean GPT-4 rating 1-10 over turns 1 and 2, judged twice
    general    OpenLLM/eval.py (lm-evaluation-harness)    ARC, HellaSwag, TruthfulQA, MMLU: the Open LLM Leaderboard
                                                          (v1) settings, no chat template, 0-100
    needle     Needle_test/prompt.py, pred.py, eval.py    mean rating 1-10 over the length x depth grid

Flags shared by the stages (--template, --gen_base_url, --judge_model, ...) are passed to each that has them;
anything else goes through --<stage>_args "..." verbatim (e.g. --mt_bench_args "--limit 10").

Outputs (--output_dir): <stage>/ (each stage's own files), results.json (every score, each stage's seconds
and exit status, the commands), results.md (the row in the paper's column order, with the paper's published
row beside it when the model is LongAlign-6B/7B/13B-64k). --compare prints an ablation table like the
paper's Table 3 from several output folders.

The paper's LongBench columns are GPT-4 ratings of the answers against LongBench's ground truth, normalised
to 0-100 (paper section 4.1: the aligned models answer at length, which ROUGE/F1 punish), not LongBench's
own metrics; its GPT-4 prompt for them is not published. The LongBench columns here are LongBench's
metrics, computed by lm-evaluation-harness, so they are not comparable number for number with the paper's.
"""

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from longalign.judge import api_key
from longalign.scriptargs import UserError, comma_list, missing_path, parse_args, run_main

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("lbc", "longbench", "mt_bench", "general", "needle")
# The table's columns, in the paper's order (Tables 2-4), then the Needle test (Figure 4 draws it).
COLUMNS = (("LongBench-Chat", "lbc"), ("S-Doc QA", "single"), ("M-Doc QA", "multi"), ("Summ", "summarization"),
           ("MT-Bench", "mt_bench"), ("ARC", "arc"), ("HellaSwag", "hellaswag"), ("TruthfulQA", "truthfulqa"),
           ("MMLU", "mmlu"), ("Needle", "needle"))
PAPER_COLUMNS = COLUMNS[:9]  # the paper prints nine; it draws the Needle test (Figure 4)
PERCENT = ("single", "multi", "summarization", "arc", "hellaswag", "truthfulqa", "mmlu")  # 0-100, one decimal

# The paper's published rows (arXiv 2401.18058): LongBench-Chat and MT-Bench are GPT-4 ratings 1-10 (twice,
# averaged); S-Doc QA / M-Doc QA / Summ are GPT-4 ratings against LongBench's answers, normalised 0-100; then
# ARC, HellaSwag, TruthfulQA, MMLU (0-100, the Open LLM Leaderboard's settings). Those four short-task values could
# not be read reliably from a source available to this project when the columns were added, so they stand as None
# (printed "–") rather than as numbers from memory: fill them in from the paper's Tables 2-4.
# The released chat models: LongAlign-6B-64k = ChatGLM3-6B-64k, packing + loss weighting; LongAlign-7B-64k and
# -13B-64k = Llama-2-7B/13B-64k, sorted batching; all on LongAlign-10k + ShareGPT (paper, appendix).
PAPER = {
    "Table 2 (ChatGLM3-6B-64k, long data)": {
        "LongAlign-0k": (3.73, 58.7, 41.1, 38.4, 5.34, None, None, None, None),
        "LongAlign-5k": (5.97, 61.8, 42.1, 42.0, 5.51, None, None, None, None),
        "LongAlign-10k": (6.21, 64.0, 44.4, 44.2, 5.5, None, None, None, None),
        "LongAlpaca-12k": (4.46, 65.8, 45.6, 44.1, 4.93, None, None, None, None),
    },
    "Table 3 (ChatGLM3-6B-64k, training method)": {
        "naive": (5.87, 65.4, 45.0, 44.8, 5.61, None, None, None, None),
        "sort": (5.4, 66.2, 46.3, 43.7, 5.76, None, None, None, None),
        "pack": (5.76, 65.0, 45.1, 42.8, 5.64, None, None, None, None),
        "pack + loss weighting": (6.21, 64.0, 44.4, 44.2, 5.5, None, None, None, None),
    },
    "Table 3 (Llama-2-7B-64k, training method)": {
        "naive": (5.95, 62.8, 42.7, 41.6, 5.52, None, None, None, None),
        "sort": (6.38, 63.4, 42.2, 41.3, 5.51, None, None, None, None),
        "pack": (5.89, 61.7, 40.4, 42.0, 5.58, None, None, None, None),
        "pack + loss weighting": (6.10, 60.8, 41.3, 43.1, 5.60, None, None, None, None),
    },
    "Table 4 (Llama-2-13B-64k)": {
        "pack + loss weighting": (6.79, 68.0, 40.3, 43.6, 6.12, None, None, None, None),
        "sort": (7.02, 66.1, 43.9, 45.3, 6.02, None, None, None, None),
    },
}
# released model -> (table, row)
RELEASED = {"longalign-6b-64k": ("Table 3 (ChatGLM3-6B-64k, training method)", "pack + loss weighting"),
            "longalign-7b-64k": ("Table 3 (Llama-2-7B-64k, training method)", "sort"),
            "longalign-13b-64k": ("Table 4 (Llama-2-13B-64k)", "sort")}


@dataclass
class Args:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "the model to evaluate (folder or hub id; chatglm and Llama-family checkpoints load without remote "
                "code); with --gen_base_url only its tokenizer is used (truncation, the Needle's token counts)"})
    output_dir: str | None = field(default=None, metadata={"help": "the run folder, e.g. runs/eval/NAME (required unless --compare)"})
    name: str | None = field(default=None, metadata={"help": "the row's name in the tables (default: the output folder's name)"})
    only: str = field(default=",".join(STAGES), metadata={"help": f"stages to run, comma-separated: {','.join(STAGES)}"})
    compare: list[str] | None = field(default=None, metadata={
        "help": "print an ablation table (like the paper's Table 3) from these run folders and stop"})
    # shared by the stages
    template: str = field(default="auto", metadata={"help": "chat format: auto | chat_template | llama | chatglm | none"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder if the model folder has none"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow checkpoint code (not needed for ChatGLM3 or Llama)"})
    gen_base_url: str | None = field(default=None, metadata={"help": "answer through this OpenAI-compatible server (vLLM, ...)"})
    gen_model: str | None = field(default=None, metadata={"help": "model name served at --gen_base_url"})
    max_length: int = field(default=64000, metadata={
        "help": "longest input in tokens for LongBench-Chat and LongBench (their middle is cut beyond it)"})
    judge_model: str = field(default="gpt-4", metadata={"help": "judge of LongBench-Chat, MT-Bench and the Needle test"})
    judge_base_url: str | None = field(default=None, metadata={
        "help": "judge endpoint (OpenAI-compatible); default OPENAI_BASE_URL, else api.openai.com; key from OPENAI_API_KEY"})
    concurrency: int = field(default=4, metadata={"help": "parallel requests to the judge (and to --gen_base_url)"})
    in_process: bool = field(default=False, metadata={
        "help": "run the stages' scripts in this process instead of one subprocess each: saves ~4 s of imports per "
                "script (the CPU quickstart's choice); a subprocess frees all of a stage's GPU memory when it ends"})
    # the data
    lbc_data_dir: str = field(default="data/longbench_chat", metadata={
        "help": "LongBench-Chat files (test_cases.json, few_shots.json, prompt_fs.txt; LongBench_Chat/README.md)"})
    longbench_data_dir: str | None = field(default=None, metadata={
        "help": "a local copy of LongBench's jsonl files (default: lm-evaluation-harness loads them from the hub)"})
    mt_bench_dir: str | None = field(default=None, metadata={
        "help": "a local copy of MT-Bench's question.jsonl and judge_prompts.jsonl (default: downloaded, MT_Bench/README.md)"})
    general_data_dir: str | None = field(default=None, metadata={
        "help": "local files of ARC, HellaSwag, TruthfulQA and MMLU in their hub datasets' fields (OpenLLM/README.md; "
                "default: lm-evaluation-harness loads them from the hub)"})
    haystack_dir: str | None = field(default=None, metadata={
        "help": "the Needle test's haystack, a folder of .txt files (the paper: Paul Graham's essays; default: "
                "the built-in synthetic haystack)"})
    # anything else, per stage, verbatim
    lbc_args: str = field(default="", metadata={"help": 'more flags for LongBench_Chat/eval.py, e.g. "--judge_runs 1"'})
    longbench_args: str = field(default="", metadata={"help": 'more flags for LongBench/eval.py, e.g. "--limit 20"'})
    mt_bench_args: str = field(default="", metadata={"help": 'more flags for MT_Bench/eval.py, e.g. "--limit 10"'})
    general_args: str = field(default="", metadata={
        "help": 'more flags for OpenLLM/eval.py, e.g. "--limit 50 --mmlu_subjects anatomy,virology"'})
    needle_prompt_args: str = field(default="", metadata={"help": 'more flags for Needle_test/prompt.py, e.g. "--context_lengths 1000,8000"'})
    needle_pred_args: str = field(default="", metadata={"help": "more flags for Needle_test/pred.py"})
    needle_eval_args: str = field(default="", metadata={"help": 'more flags for Needle_test/eval.py, e.g. "--scorer match"'})

    def __post_init__(self):
        if self.compare:
            return
        if not self.output_dir:
            raise UserError("--output_dir is required (e.g. runs/eval/NAME), or pass --compare DIR ...")
        self.stages = comma_list(self.only, str, "only")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise UserError(f"--only {','.join(unknown)} is not a stage; pick from {','.join(STAGES)}")
        if not self.model_name_or_path:
            raise UserError("--model_name_or_path is required (the model to evaluate)")
        if missing_path(self.model_name_or_path):
            raise UserError(f"--model_name_or_path {self.model_name_or_path} does not exist; pass a model folder or hub id")


# ---------------------------------------------------------------------------------------------
# 1. The stages: the commands each one runs, and where its score lands

def stage_commands(args: Args, out: Path) -> dict[str, list[list[str]]]:
    """stage -> its commands (argv lists, run in order), each script with the paper's settings plus the shared
    flags it has, plus --<stage>_args."""
    model = ["--model_name_or_path", args.model_name_or_path]
    opt = lambda flag, value: [flag, str(value)] if value not in (None, "") else []  # noqa: E731
    gen = (opt("--template", args.template) + opt("--tokenizer", args.tokenizer)
           + opt("--gen_base_url", args.gen_base_url) + opt("--gen_model", args.gen_model)
           + (["--trust_remote_code", "true"] if args.trust_remote_code else []))
    judge = opt("--judge_model", args.judge_model) + opt("--judge_base_url", args.judge_base_url)
    conc = opt("--concurrency", args.concurrency)
    needle = out / "needle"
    return {
        "lbc": [["LongBench_Chat/eval.py", *model, "--output_dir", str(out / "lbc"), "--data_dir", args.lbc_data_dir,
                 "--max_length", str(args.max_length), *gen, *judge, *conc, *shlex.split(args.lbc_args)]],
        "longbench": [["LongBench/eval.py", *model, "--output_dir", str(out / "longbench"), "--max_length",
                       str(args.max_length), *opt("--data_dir", args.longbench_data_dir), *gen,
                       *shlex.split(args.longbench_args)]],
        "mt_bench": [["MT_Bench/eval.py", *model, "--output_dir", str(out / "mt_bench"),
                      *opt("--mt_bench_dir", args.mt_bench_dir), *gen, *judge, *conc,
                      "--judge_runs", "2", *shlex.split(args.mt_bench_args)]],  # the paper judged MT-Bench twice
        # no --template: the leaderboard scores raw few-shot prompts
        "general": [["OpenLLM/eval.py", *model, "--output_dir", str(out / "general"),
                     *opt("--data_dir", args.general_data_dir), *opt("--tokenizer", args.tokenizer),
                     *opt("--gen_base_url", args.gen_base_url), *opt("--gen_model", args.gen_model),
                     *(["--trust_remote_code", "true"] if args.trust_remote_code else []),
                     *shlex.split(args.general_args)]],
        "needle": [
            ["Needle_test/prompt.py", "--tokenizer", args.tokenizer or args.model_name_or_path,
             *opt("--haystack_dir", args.haystack_dir), "--output_dir", str(needle / "prompts"),
             *(["--trust_remote_code", "true"] if args.trust_remote_code else []), *shlex.split(args.needle_prompt_args)],
            ["Needle_test/pred.py", *model, "--prompts_file", str(needle / "prompts" / "prompts.jsonl"),
             "--output_dir", str(needle / "pred"), *gen, *shlex.split(args.needle_pred_args)],
            ["Needle_test/eval.py", "--predictions_file", str(needle / "pred" / "predictions.jsonl"),
             "--output_dir", str(needle), *judge, *conc, *shlex.split(args.needle_eval_args)],
        ],
    }


def needs_judge(stage: str, commands: list[list[str]]) -> bool:
    """Whether the stage asks an LLM judge (then OPENAI_API_KEY must be set before anything runs)."""
    flat = [x for cmd in commands for x in cmd]
    if stage in ("longbench", "general"):
        return False  # LongBench's metrics and the general tasks' accuracies are computed, not judged
    if stage == "needle":
        return "match" not in [flat[i + 1] for i, x in enumerate(flat[:-1]) if x == "--scorer"]
    return "false" not in [flat[i + 1].lower() for i, x in enumerate(flat[:-1]) if x == "--do_judge"]


def read_scores(out: Path) -> dict:
    """The table's cells from the files the stages wrote (None where a stage has not finished)."""
    def load(path):
        p = out / path
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    lbc, lb, mt, general, needle = (load(p) for p in ("lbc/scores.json", "longbench/scores.json", "mt_bench/scores.json",
                                                      "general/scores.json", "needle/summary.json"))
    groups, short = (lb or {}).get("groups", {}), (general or {}).get("columns", {})
    return {"lbc": (lbc or {}).get("mean"), "single": groups.get("single"), "multi": groups.get("multi"),
            "summarization": groups.get("summarization"), "mt_bench": (mt or {}).get("mean"),
            **{key: short.get(key) for key in ("arc", "hellaswag", "truthfulqa", "mmlu")},
            "needle": (needle or {}).get("mean"),
            "details": {"lbc": _pick(lbc, "num_scored", "num_failed", "judge_model", "per_language"),
                        "longbench": _pick(lb, "tasks", "num_docs"),
                        "mt_bench": _pick(mt, "turn_1", "turn_2", "per_category", "num_scored", "num_failed", "judge_model"),
                        "general": _pick(general, "mmlu_subjects", "num_fewshot", "num_docs"),
                        "needle": _pick(needle, "num_scored", "num_failed", "per_length")
                        | ({"judge_model": _needle_judge(needle["settings"])} if needle and "settings" in needle else {})}}


def _pick(d: dict | None, *keys) -> dict:
    return {} if d is None else {k: d[k] for k in keys if k in d}


def _needle_judge(settings: dict) -> str:
    if settings.get("scorer") == "match":
        return f"match scorer (key phrase {settings.get('key_phrase') or 'the needle'!r})"
    return settings.get("judge_model")


# ---------------------------------------------------------------------------------------------
# 2. The tables

def cell(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def row_cells(scores: dict) -> list[str]:
    """The ten cells: 1-10 ratings with 2 decimals, 0-100 scores with 1, as the paper prints them."""
    return [cell(scores.get(key), 1 if key in PERCENT else 2) for _, key in COLUMNS]


def paper_cells(values: tuple) -> list[str]:
    """A paper row's nine numbers as cells (the same digits as ours), and no Needle number (the paper draws it)."""
    return row_cells(dict(zip([key for _, key in PAPER_COLUMNS], values, strict=True)))


def paper_row(model: str) -> tuple[str, tuple] | None:
    """(citation, the paper's nine numbers) when the model is one of the released LongAlign chat models."""
    name = Path(model.rstrip("/")).name.lower()
    if name not in RELEASED:
        return None
    table, row = RELEASED[name]
    return f"paper, {table.split(' (')[0]}: {row}", PAPER[table][row]


def markdown_table(rows: list[tuple[str, list[str]]]) -> str:
    header = ["model", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
    return "\n".join(lines)


def results_markdown(name: str, model: str, scores: dict, judges: str) -> str:
    rows = [(name, row_cells(scores))]
    paper = paper_row(model)
    if paper:
        rows.append((paper[0], paper_cells(paper[1])))
    return (f"# Evaluation of {model}\n\n{markdown_table(rows)}\n\n"
            "LongBench-Chat, MT-Bench and Needle: mean rating 1-10. S-Doc QA, M-Doc QA, Summ: LongBench's metrics "
            "(QA F1, ROUGE-L), 0-100, through lm-evaluation-harness. The paper's LongBench columns are GPT-4 ratings "
            "against the same answers normalised to 0-100, so they do not compare number for number. ARC (25-shot "
            "acc_norm), HellaSwag (10-shot acc_norm), TruthfulQA (0-shot mc2), MMLU (5-shot acc, mean over its "
            "subjects): the Open LLM Leaderboard's settings through lm-evaluation-harness, raw prompts without a chat "
            "template, 0-100.\n\n"
            f"Judges: {judges}\n")


def compare(dirs: list[str]) -> str:
    """The ablation table: one row per run folder, from its results.json (or its stages' files)."""
    rows, times = [], []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist; run scripts/eval_all.py --output_dir {d} first")
        res = json.loads(path.read_text(encoding="utf-8"))
        rows.append((res["name"], row_cells(read_scores(Path(d)))))
        stages = res.get("stages", {})
        times.append("| " + " | ".join([res["name"], *(f"{stages[s]['seconds']:.0f}" if s in stages else "–"
                                                        for s in STAGES)]) + " |")
    paper = [(f"{table.split(' (')[1].split(',')[0]}: {row}", paper_cells(values))
             for table, table_rows in PAPER.items() if table.startswith("Table 3") for row, values in table_rows.items()]
    seconds = "\n".join(["| seconds, last run | " + " | ".join(STAGES) + " |", "|" + "---|" * (len(STAGES) + 1), *times])
    return (markdown_table(rows) + "\n\n" + seconds + "\n\nThe paper's Table 3 (GPT-4 judge; its LongBench columns "
            "are GPT-4 ratings, not LongBench's metrics; a – is a value not recorded in this repository):\n\n"
            + markdown_table(paper))


# ---------------------------------------------------------------------------------------------
# 3. The run

def run_script(cmd: list[str], in_process: bool) -> int:
    """`python SCRIPT ARGS...` (the script by its path in this checkout; relative paths in the flags stay relative
    to the caller's cwd), as a subprocess or, in_process, through runpy as `python` would run it; its exit status."""
    script = str(ROOT / cmd[0])
    if not in_process:
        return subprocess.run([sys.executable, script, *cmd[1:]]).returncode
    import gc
    import runpy

    saved = sys.argv
    sys.argv = [script, *cmd[1:]]
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as e:  # a user error in the stage (run_main: exit 2), or an explicit exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
        gc.collect()  # the stage's model goes with its module


def run_stage(stage: str, commands: list[list[str]], in_process: bool = False) -> tuple[int, float]:
    """Run the stage's commands in order (stop at the first failure); (exit status, seconds). Each script is
    resumable itself: a re-run does only what its files lack."""
    t0 = time.monotonic()
    for cmd in commands:
        print(f"[eval_all] {stage}: python {shlex.join(cmd)}", flush=True)
        status = run_script(cmd, in_process)
        if status != 0:
            return status, time.monotonic() - t0
    return 0, time.monotonic() - t0


def main(argv=None):
    (args,) = parse_args(Args, argv)
    if args.compare:
        table = compare(args.compare)
        print(table)
        return table
    out = Path(args.output_dir).resolve()
    commands = {s: c for s, c in stage_commands(args, out).items() if s in args.stages}
    judged = [s for s, c in commands.items() if needs_judge(s, c)]
    if judged:  # before hours of generation, not after
        api_key(f" ({', '.join(judged)} ask a judge), or leave those stages out with --only")
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    results |= {"name": args.name or out.name, "model": args.model_name_or_path}
    results.setdefault("stages", {})

    for stage, cmds in commands.items():
        print(f"\n==================== {stage} ====================", flush=True)
        status, seconds = run_stage(stage, cmds, args.in_process)
        earlier = results["stages"].get(stage, {}).get("seconds_per_run", [])
        results["stages"][stage] = {"status": "done" if status == 0 else f"failed (exit {status})",
                                    "seconds": round(seconds, 1), "seconds_per_run": [*earlier, round(seconds, 1)],
                                    "commands": [shlex.join(c) for c in cmds],
                                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        if status != 0:
            raise UserError(f"stage {stage} failed (exit {status}, its message is above); fix it and re-run the "
                            "same command: finished work is kept")

    scores = read_scores(out)
    judges = "; ".join(f"{s}: {d['judge_model']}" for s, d in scores["details"].items() if d.get("judge_model"))
    judges = judges or "none recorded"
    paper = paper_row(args.model_name_or_path)
    results |= {"scores": {key: scores[key] for _, key in COLUMNS}, "details": scores["details"],
                "paper": paper and {"source": paper[0], "row": dict(zip([c for c, _ in PAPER_COLUMNS], paper[1], strict=True))}}
    results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    md = results_markdown(results["name"], args.model_name_or_path, scores, judges)
    (out / "results.md").write_text(md, encoding="utf-8")
    times = ", ".join(f"{s} {v['seconds']:.0f} s" for s, v in results["stages"].items() if s in commands)
    print(f"\n{md}\nthis run's stages: {times} -> {out / 'results.md'}")
    return results


if __name__ == "__main__":
    run_main(main)
