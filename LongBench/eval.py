"""LongBench (v1) single-document QA, multi-document QA and summarization through lm-evaluation-harness.

The paper reports three LongBench groups beside LongBench-Chat and MT-Bench (Table 3): S-Doc QA
(narrativeqa, qasper, multifieldqa_en, multifieldqa_zh), M-Doc QA (hotpotqa, 2wikimqa, musique, dureader)
and Summ (gov_report, qmsum, multi_news, vcsum), each the unweighted mean of its tasks' scores (0-100).
lm-eval's own tasks supply the prompts, answer lengths and metrics; this script hands lm-eval our model
(in-process through longalign.models, so chatglm-format and Llama-family checkpoints load without remote
code; or any OpenAI-compatible server) with LongBench's own truncation (the middle of the raw prompt is
cut to --max_length tokens, then the chat format is applied; longalign/harness.py) and greedy decoding.

Run as:
    python LongBench/eval.py --model_name_or_path THUDM/LongAlign-7B-64k --output_dir runs/longbench/longalign-7b \
        [--data_dir data/longbench] [--groups single,multi,summarization] [--max_length 64000]

Inputs: without --data_dir lm-eval loads its hub copy of LongBench (Xnhyacinth/LongBench); with it, LongBench's
own files (<task>.jsonl from THUDM's data.zip, or tools/synthetic_longbench.py's) are served to the same tasks.
Outputs (--output_dir):
    settings.json      the generation settings (a re-run with other settings is refused)
    predictions.jsonl  {task, doc_id, prompt_sha, _id, prediction, input_tokens, truncated, prompt_tokens,
                        max_new_tokens, template}: a re-run serves these and generates only what is missing
    lm_eval_tasks/     the task and group YAMLs lm-eval ran (each includes lm-eval's installed one)
    scores.json        tasks {task: 0-100}, groups {group: mean of its tasks}, lm_eval_groups (lm-eval's own
                       group values, equal), num_docs, generated / cached (this run), truncated (prompts
                       cut to --max_length), seconds, lm_eval_version, settings
"""

import difflib
import json
import logging
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longalign.generation import GenerationArgs, Generator, JsonlTable, check_settings
from longalign.scriptargs import UserError, comma_list, missing_path, parse_args, run_main

GROUPS = ("single", "multi", "summarization")
TOLERANCE = 1e-9  # our group mean vs lm-eval's (the same floats, summed in another order)


@dataclass
class Args(GenerationArgs):
    model_name_or_path: str = field(metadata={
        "help": "model folder or hub id (our model files for llama/chatglm types, AutoModelForCausalLM otherwise); "
                "with --gen_base_url only its tokenizer is loaded, for truncation"})
    output_dir: str = field(metadata={"help": "where predictions and scores go (a re-run resumes there)"})
    groups: str = field(default="single,multi,summarization", metadata={
        "help": "comma-separated LongBench groups: single (S-Doc QA), multi (M-Doc QA), summarization (Summ)"})
    tasks: str | None = field(default=None, metadata={
        "help": "comma-separated tasks of those groups to run (default: all of them); a group's mean is only "
                "reported when all its tasks ran"})
    data_dir: str | None = field(default=None, metadata={
        "help": "folder of LongBench's own <task>.jsonl files (THUDM's data.zip, or tools/synthetic_longbench.py); "
                "default: lm-eval's hub copy Xnhyacinth/LongBench"})
    max_length: int = field(default=64000, metadata={
        "help": "longest prompt in tokens of the model's tokenizer; a longer one keeps its first and last "
                "max_length//2 tokens (LongBench's middle truncation), before the chat format"})
    limit: int | None = field(default=None, metadata={"help": "only the first N cases of each task (quick checks; not the benchmark)"})
    max_new_tokens_cap: int | None = field(default=None, metadata={
        "help": "cap on each task's answer length (lm-eval's max_gen_toks: 32-512); for quick checks only"})
    concurrency: int = field(default=4, metadata={"help": "parallel requests to --gen_base_url (in-process: one at a time)"})

    def __post_init__(self):
        super().__post_init__()
        if self.max_length < 2:
            raise UserError("--max_length must be >= 2 (LongBench keeps max_length//2 tokens at each end); fix the flag")
        if self.gen_base_url and not self.gen_model:
            raise UserError("--gen_base_url needs --gen_model, the model name the server serves")
        for name in ("limit", "max_new_tokens_cap", "concurrency"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1; fix the flag")


# ---------------------------------------------------------------------------------------------
# 1. What to run: groups, tasks, data

def choose(args: Args, groups_of: dict[str, list[str]]) -> tuple[list[str], list[str], list[str]]:
    """(groups asked for, tasks to run, groups all of whose tasks run) from --groups and --tasks."""
    groups = comma_list(args.groups, str, "groups")
    for g in groups:
        if g not in groups_of:
            raise UserError(f"--groups: unknown group {g!r}; pick from {','.join(groups_of)}")
    offered = [t for g in groups for t in groups_of[g]]
    tasks = offered if args.tasks is None else comma_list(args.tasks, str, "tasks")
    for t in tasks:
        if t not in offered:
            near = difflib.get_close_matches(t, offered, n=1)
            hint = f"did you mean {near[0]}?" if near else f"the tasks of --groups {args.groups} are {','.join(offered)}"
            raise UserError(f"--tasks: {t!r} is not a task of --groups {args.groups} ({hint})")
    tasks = [t for t in offered if t in tasks]  # lm-eval's order, no repeats
    return groups, tasks, [g for g in groups if set(groups_of[g]) <= set(tasks)]


def check_data_dir(data_dir: Path, tasks: list[str]) -> None:
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} does not exist; extract LongBench's data.zip there or run "
                        "python -m tools.synthetic_longbench --output_dir DIR")
    missing = [f"{t}.jsonl" for t in tasks if not (data_dir / f"{t}.jsonl").is_file()]
    if missing:
        raise UserError(f"--data_dir {data_dir} has no {', '.join(missing)}; put LongBench's files there "
                        "or leave those tasks out with --tasks")


# ---------------------------------------------------------------------------------------------
# 2. Settings: cached answers are only valid for the settings they were generated with

GENERATION_SETTINGS = ("model_name_or_path", "tokenizer", "max_length", "template", "gen_base_url", "gen_model",
                       "max_new_tokens_cap")


# ---------------------------------------------------------------------------------------------
# 3. The run: lm-eval's tasks, our model

class LazyGenerator:
    """The Generator, loaded on the first prompt that is not cached (a re-run loads no model at all)."""

    def __init__(self, args: Args):
        self.args, self._gen, self._lock = args, None, threading.Lock()

    def __getattr__(self, name):
        with self._lock:  # server requests run in threads: load once
            if self._gen is None:
                self._gen = Generator.from_args(self.args, temperature=0.0)
        return getattr(self._gen, name)


def quiet_logs() -> None:
    """lm-eval's own (longalign.harness.quiet_lm_eval); jieba announces its dictionary; fuzzywuzzy its speed.
    Warnings that matter (e.g. --limit is for testing only) still show."""
    import jieba

    from longalign.harness import quiet_lm_eval

    quiet_lm_eval()
    jieba.setLogLevel(logging.WARNING)
    # lm-eval's LongBench metrics import fuzzywuzzy for the code tasks (none of these groups uses it)
    warnings.filterwarnings("ignore", message="Using slow pure-python SequenceMatcher")


def evaluate(args: Args, out: Path, tasks: list[str], full_groups: list[str], groups_of: dict, table: JsonlTable):
    """lm-eval's results dict and the adapter (for its counts)."""
    import lm_eval
    import openai
    from datasets.exceptions import DatasetNotFoundError
    from lm_eval.tasks import TaskManager

    from longalign.harness import LongBenchLM, task_configs

    folder = task_configs(out / "lm_eval_tasks", tasks, full_groups, Path(args.data_dir).resolve() if args.data_dir else None)
    grouped = {t for g in full_groups for t in groups_of[g]}
    names = [f"longbench_{g}" for g in full_groups] + [f"longbench_{t}" for t in tasks if t not in grouped]
    quiet_logs()
    lm = LongBenchLM(LazyGenerator(args), args.max_length, table, args.max_new_tokens_cap,
                     args.concurrency if args.gen_base_url else 1, 1 if args.gen_base_url else args.batch_size)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            limit=args.limit, bootstrap_iters=0, log_samples=False)
    except openai.APIError as e:
        raise UserError(f"the generation server at {args.gen_base_url} failed after retries ({e}); "
                        "re-run the same command to continue") from None
    except (ConnectionError, DatasetNotFoundError) as e:  # only the hub copy is fetched; local files are read
        raise UserError(f"lm-eval could not load its copy of LongBench from the hub ({e}); connect to the hub, or "
                        "pass --data_dir with LongBench's own files (LongBench/README.md)") from None
    return results, lm


def summarize(results: dict, tasks: list[str], full_groups: list[str], groups_of: dict) -> dict:
    """Per-task scores and group means on 0-100, lm-eval's own group values beside ours (they must agree)."""
    res = results["results"]
    scores = {t: 100 * res[f"longbench_{t}"]["score,none"] for t in tasks}
    groups = {g: sum(scores[t] for t in groups_of[g]) / len(groups_of[g]) for g in full_groups}
    theirs = {g: 100 * res[f"longbench_{g}"]["score,none"] for g in full_groups}
    for g in full_groups:
        assert abs(groups[g] - theirs[g]) < TOLERANCE, f"group {g}: our mean {groups[g]} != lm-eval's {theirs[g]}"
    return {"tasks": scores, "groups": groups, "lm_eval_groups": theirs,
            "num_docs": {t: results["n-samples"][f"longbench_{t}"]["effective"] for t in tasks}}


def main(argv=None) -> dict:
    (args,) = parse_args(Args, argv)
    from longalign.harness import lm_eval_groups

    groups_of = lm_eval_groups(GROUPS)
    groups, tasks, full_groups = choose(args, groups_of)
    if args.data_dir:
        check_data_dir(Path(args.data_dir), tasks)
    for flag in ("model_name_or_path", "tokenizer"):
        if getattr(args, flag) and missing_path(getattr(args, flag)):
            raise UserError(f"--{flag} {getattr(args, flag)} does not exist; pass a model folder or a hub id")
    out = Path(args.output_dir)
    table = JsonlTable(out / "predictions.jsonl", key=lambda r: (r["task"], r["doc_id"], r["prompt_sha"]))
    check_settings(out, {"generation": ({k: getattr(args, k) for k in GENERATION_SETTINGS}, len(table) > 0)})
    print(f"LongBench: groups {','.join(groups)}, {len(tasks)} tasks, data "
          f"{args.data_dir or 'Xnhyacinth/LongBench (hub)'}, --max_length {args.max_length}")

    start = time.time()
    results, lm = evaluate(args, out, tasks, full_groups, groups_of, table)
    import lm_eval

    summary = summarize(results, tasks, full_groups, groups_of) | {
        "generated": lm.generated, "cached": lm.cached, "truncated": lm.truncated, "seconds": round(time.time() - start, 1),
        "lm_eval_version": lm_eval.__version__, "settings": asdict(args)}
    (out / "scores.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    shown = ", ".join(f"{g} {v:.2f}" for g, v in summary["groups"].items()) or ", ".join(
        f"{t} {v:.2f}" for t, v in summary["tasks"].items())
    print(f"LongBench {shown} (0-100) over {sum(summary['num_docs'].values())} cases ({lm.truncated} cut to "
          f"--max_length); this run generated "
          f"{lm.generated}, served {lm.cached} from {table.path.name}, {summary['seconds']:.0f} s "
          f"-> {out / 'scores.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
