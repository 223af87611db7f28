"""The paper's four short-task columns, ARC, HellaSwag, TruthfulQA and MMLU, with the Open LLM Leaderboard's (v1)
settings through lm-evaluation-harness 0.4.13 (paper section 4.1: "We follow the evaluation settings in the Open
LLM Leaderboard and utilize lm-evaluation-harness").

    column      lm-eval task (its own YAML)   shots  few-shot examples                    score, 0-100
    ARC         arc_challenge                 25     train split, random, seed 1234       acc_norm
    HellaSwag   hellaswag                     10     train split, random, seed 1234       acc_norm
    TruthfulQA  truthfulqa_mc2                 0     (the task's fixed six Q/A preamble)  mc2 (lm-eval calls it acc)
    MMLU        mmlu_<subject>, 57 tasks       5     dev split, its first 5               acc, mean over subjects

The shot counts and few-shot splits are those of lm-eval's own `openllm` group (tasks/benchmarks/openllm.yaml).
Every task is multiple choice: each answer choice is scored by its log-likelihood after the prompt; `acc` takes
the most likely choice, `acc_norm` the most likely per character of the choice (lm-eval's length normalisation),
`mc2` is the probability mass of the true answers among all answers. MMLU is the unweighted mean of its subjects'
accuracies, as the leaderboard reported it (lm-eval's own `mmlu` group weights subjects by size instead).

No chat template: the leaderboard scores the raw few-shot prompt ("Question: ...\nAnswer:"), so the prompt the
model reads is exactly lm-eval's text, for base and chat models alike (--template does not apply here), and, as the
leaderboard's harness encoded it, without the tokenizer's special tokens (no <s>; --add_special_tokens true adds them).

The model is ours, in-process (longalign.models.load_model: chatglm-format checkpoints without remote code; bf16
on a GPU, fp32 on a CPU) inside lm-eval's HFLM, batched; or an OpenAI-compatible completions server that returns
prompt log-probabilities (vLLM: --gen_base_url http://host:8000/v1 --gen_model NAME; lm-eval's local-completions).

Run as:
    python OpenLLM/eval.py --model_name_or_path THUDM/LongAlign-7B-64k --output_dir runs/general/longalign-7b \
        [--tasks arc,hellaswag,truthfulqa,mmlu] [--data_dir DIR] [--limit N] [--mmlu_subjects anatomy,virology]

Inputs: without --data_dir lm-eval loads its hub datasets (allenai/ai2_arc, Rowan/hellaswag,
truthfulqa/truthful_qa, cais/mmlu); with it, local JSONL files in the same datasets' fields (OpenLLM/README.md,
tools/synthetic_general.py) are served to the same tasks.
Outputs (--output_dir):
    settings.json          the model settings (a re-run with other ones is refused)
    loglikelihoods.jsonl   {key (sha256 of the request's context and continuation), task, doc_id, ll, greedy}: a
                           re-run serves these, computes only what is missing, and loads no model if nothing is
    lm_eval_tasks/         the task YAMLs lm-eval ran (each includes lm-eval's installed one)
    samples.jsonl          per case: task, doc_id, target, context (the whole prompt), choices, lls, its metrics
    scores.json            columns {arc, hellaswag, truthfulqa, mmlu} 0-100, mmlu_subjects, num_fewshot,
                           num_docs, computed / cached (this run's requests), seconds, lm_eval_version, settings
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longalign.generation import JsonlTable, check_settings
from longalign.scriptargs import UserError, comma_list, missing_path, parse_args, run_main

ARC_FIELDS = ("question", "choices", "answerKey")
HELLASWAG_FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
TRUTHFULQA_FIELDS = ("question", "mc1_targets", "mc2_targets")
MMLU_FIELDS = ("question", "choices", "answer")

# column -> lm-eval's task, the leaderboard's shots, the split the shots come from (None: the task's own), the
# metric read, the local data folder under --data_dir (MMLU: one per subject), its splits, the fields lm-eval reads
COLUMNS = {
    "arc": dict(task="arc_challenge", shots=25, fewshot_split="train", metric="acc_norm",
                data="ai2_arc/ARC-Challenge", splits=("train", "test"), fields=ARC_FIELDS),
    "hellaswag": dict(task="hellaswag", shots=10, fewshot_split="train", metric="acc_norm",
                      data="hellaswag", splits=("train", "validation"), fields=HELLASWAG_FIELDS),
    "truthfulqa": dict(task="truthfulqa_mc2", shots=0, fewshot_split=None, metric="acc",
                       data="truthful_qa/multiple_choice", splits=("validation",), fields=TRUTHFULQA_FIELDS),
    "mmlu": dict(task="mmlu_{subject}", shots=5, fewshot_split=None, metric="acc",  # dev, first_n: lm-eval's YAML
                 data="mmlu/{subject}", splits=("dev", "test"), fields=MMLU_FIELDS),
}
# what the log-likelihoods depend on besides the requests' text (the table's key)
MODEL_SETTINGS = ("model_name_or_path", "tokenizer", "gen_base_url", "gen_model", "max_length", "add_special_tokens")


@dataclass
class Args:
    model_name_or_path: str = field(metadata={
        "help": "model folder or hub id (our model files for llama/chatglm types, AutoModelForCausalLM otherwise); "
                "with --gen_base_url only its tokenizer is loaded"})
    output_dir: str = field(metadata={"help": "where the log-likelihoods and scores go (a re-run resumes there)"})
    tasks: str = field(default="arc,hellaswag,truthfulqa,mmlu", metadata={
        "help": "comma-separated columns: arc, hellaswag, truthfulqa, mmlu"})
    mmlu_subjects: str | None = field(default=None, metadata={
        "help": "comma-separated MMLU subjects (lm-eval's names, e.g. anatomy); default all 57. With fewer, the MMLU "
                "cell is the mean over those only (quick checks, the quickstart; not the benchmark)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "local files in the hub datasets' fields (OpenLLM/README.md; tools/synthetic_general.py); "
                "default: lm-eval loads them from the hub"})
    limit: int | None = field(default=None, metadata={
        "help": "only the first N cases of each task (each MMLU subject); quick checks, not the benchmark"})
    batch_size: int = field(default=8, metadata={
        "help": "requests per forward pass in-process, prompts per request to --gen_base_url (results do not depend "
                "on it beyond float rounding)"})
    add_special_tokens: bool = field(default=False, metadata={
        "help": "put the tokenizer's special tokens (a Llama <s>, ChatGLM3's [gMASK] sop) before each prompt. The "
                "leaderboard did not (lm-eval's hf-causal-experimental model at its commit b281b09 encoded causal "
                "models' text without them); true = lm-eval 0.4.13's HFLM default"})
    max_length: int | None = field(default=None, metadata={
        "help": "longest prompt + choice in tokens (lm-eval cuts longer ones on the left); default: the model's"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder if the model folder has none"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow checkpoint code (not needed for ChatGLM3)"})
    gen_base_url: str | None = field(default=None, metadata={
        "help": "score through this OpenAI-compatible completions server with prompt log-probabilities (vLLM, "
                "http://host:8000/v1) instead of in-process"})
    gen_model: str | None = field(default=None, metadata={"help": "model name served at --gen_base_url"})
    log_samples: bool = field(default=True, metadata={"help": "write samples.jsonl (every prompt, its choices and scores)"})

    def __post_init__(self):
        self.columns = comma_list(self.tasks, str, "tasks")
        unknown = [c for c in self.columns if c not in COLUMNS]
        if unknown:
            raise UserError(f"--tasks {','.join(unknown)} is not a column; pick from {','.join(COLUMNS)}")
        self.columns = [c for c in COLUMNS if c in self.columns]  # the paper's order
        if self.gen_base_url and not self.gen_model:
            raise UserError("--gen_base_url needs --gen_model, the model name the server serves")
        for name in ("limit", "batch_size", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1; fix the flag")


# ---------------------------------------------------------------------------------------------
# 1. What to run: lm-eval's tasks, the leaderboard's shots, the data

def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def mmlu_subjects() -> list[str]:
    """The 57 subjects, from lm-eval's own mmlu_<subject>.yaml files."""
    return sorted(p.stem.removeprefix("mmlu_") for p in (lm_eval_tasks_dir() / "mmlu" / "default").glob("mmlu_*.yaml"))


def choose_subjects(args: Args) -> list[str]:
    subjects = mmlu_subjects()
    if args.mmlu_subjects is None:
        return subjects
    chosen = comma_list(args.mmlu_subjects, str, "mmlu_subjects")
    unknown = [s for s in chosen if s not in subjects]
    if unknown:
        raise UserError(f"--mmlu_subjects {','.join(unknown)} is not an MMLU subject; lm-eval's names are "
                        f"{','.join(subjects[:4])}, ... (57)")
    return [s for s in subjects if s in chosen]


def runs(args: Args, subjects: list[str]) -> list[tuple[str, str, dict]]:
    """(column, lm-eval task, spec) for everything to run: one per column, one per subject for MMLU."""
    out = []
    for column in args.columns:
        spec = COLUMNS[column]
        for subject in (subjects if column == "mmlu" else [None]):
            task = spec["task"].format(subject=subject)
            out.append((column, task, {**spec, "data": spec["data"].format(subject=subject)}))
    return out


def installed_yaml(task: str) -> Path:
    folder = {"arc_challenge": "arc", "hellaswag": "hellaswag", "truthfulqa_mc2": "truthfulqa"}.get(task, "mmlu/default")
    return lm_eval_tasks_dir() / folder / f"{task}.yaml"


def check_data_dir(data_dir: Path, todo: list[tuple[str, str, dict]]) -> None:
    """Every file the tasks read is there, and the few-shot split holds at least the shots (one sentence if not)."""
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} does not exist; put the datasets' files there (OpenLLM/README.md) "
                        "or run python -m tools.synthetic_general --output_dir DIR")
    for _, task, spec in todo:
        for split in spec["splits"]:
            path = data_dir / spec["data"] / f"{split}.jsonl"
            if not path.is_file():
                raise UserError(f"--data_dir {data_dir} has no {spec['data']}/{split}.jsonl (task {task}); put that "
                                "split there (OpenLLM/README.md) or leave the column out with --tasks")
        shots_split = spec["fewshot_split"] or ("dev" if task.startswith("mmlu_") else None)
        if spec["shots"] and shots_split:
            path = data_dir / spec["data"] / f"{shots_split}.jsonl"
            n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            if n < spec["shots"]:
                raise UserError(f"{path} holds {n} cases; task {task} takes {spec['shots']} few-shot examples "
                                "from it (the leaderboard's setting), so it needs at least that many")


def task_configs(folder: Path, todo: list[tuple[str, str, dict]], data_dir: Path | None) -> Path:
    """One YAML per task in `folder`, each `include`-ing lm-eval's installed one unchanged (prompt, choices,
    metric) and adding the leaderboard's shots and few-shot split; with data_dir its data come from local files.
    lm-eval indexes only this folder (fast, and no task is defined twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()  # a task of an earlier run with other --tasks must not be indexed
    for _, task, spec in todo:
        lines = [f"include: {json.dumps(str(installed_yaml(task)))}", f"num_fewshot: {spec['shots']}"]
        if spec["fewshot_split"]:
            lines.append(f"fewshot_split: {spec['fewshot_split']}")
        if data_dir is not None:
            lines += ["custom_dataset: !function longalign.harness.local_splits", "dataset_kwargs:",
                      f"  folder: {json.dumps(str(data_dir / spec['data']))}",
                      f"  splits: {json.dumps(list(spec['splits']))}", f"  fields: {json.dumps(list(spec['fields']))}"]
        (folder / f"{task}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------
# 2. The model behind lm-eval: in-process HFLM over our model, or lm-eval's completions-API client

def make_backend(args: Args):
    """The LM that computes the log-likelihoods (built only when one is missing from the table)."""
    if args.gen_base_url:
        from importlib.util import find_spec

        from lm_eval.models.openai_completions import LocalCompletionsAPI

        from longalign.models import model_config

        if find_spec("tenacity") is None:  # lm-eval's [api] extra; its client raises a traceback without it
            raise UserError("--gen_base_url needs the tenacity package (lm-eval's API client); pip install -r "
                            "requirements.txt")

        # one request at a time holding --batch_size prompts (the server batches them; lm-eval warns that it must
        # take varied lengths, which OpenAI-compatible servers do): lm-eval's concurrent client would leave asyncio
        # tracebacks behind when the server is down
        logging.getLogger("lm_eval.models.api_models").addFilter(lambda r: "Batch size > 1" not in r.getMessage())
        # the model's own length, as HFLM reads it in-process (lm-eval's client would cut 25-shot prompts at 2048)
        config = model_config(args.model_name_or_path)
        max_length = args.max_length or config.get("max_position_embeddings") or config.get("seq_length") or 2048
        return LocalCompletionsAPI(base_url=args.gen_base_url.rstrip("/") + "/completions", model=args.gen_model,
                                   tokenizer_backend="huggingface", tokenizer=args.tokenizer or args.model_name_or_path,
                                   num_concurrent=1, batch_size=args.batch_size, max_length=max_length,
                                   add_bos_token=args.add_special_tokens)
    from lm_eval.models.huggingface import HFLM

    from longalign.generation import load_causal_lm
    from longalign.tokenization import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer or args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    model = load_causal_lm(args.model_name_or_path, args.trust_remote_code)
    print(f"model: {args.model_name_or_path} in-process ({next(model.parameters()).dtype}, {model.device}), "
          f"batch size {args.batch_size}, no chat template, {'with' if args.add_special_tokens else 'no'} special tokens")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                add_bos_token=args.add_special_tokens)


def evaluate(args: Args, out: Path, todo: list, table: JsonlTable):
    import lm_eval
    import requests
    from datasets.exceptions import DatasetNotFoundError
    from lm_eval.tasks import TaskManager

    from longalign.harness import CachedLoglikelihoodLM, quiet_lm_eval

    folder = task_configs(out / "lm_eval_tasks", todo, Path(args.data_dir).resolve() if args.data_dir else None)
    quiet_lm_eval()
    lm = CachedLoglikelihoodLM(lambda: make_backend(args), table)
    try:
        results = lm_eval.simple_evaluate(  # lm-eval's seeds: few-shot sampler 1234 (and python 0, numpy/torch 1234)
            model=lm, tasks=[task for _, task, _ in todo],
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            limit=args.limit, bootstrap_iters=0, log_samples=args.log_samples)
    except (requests.RequestException, ConnectionError, DatasetNotFoundError) as e:
        # lm-eval's completions client retries (3 times), then raises; what was computed before is in the table
        if args.gen_base_url and isinstance(e, requests.RequestException):
            raise UserError(f"could not reach the server at {args.gen_base_url} ({type(e).__name__}); start it or "
                            "fix --gen_base_url, then re-run the same command to continue") from None
        if isinstance(e, ConnectionError | DatasetNotFoundError):  # only hub data is fetched; local files are read
            raise UserError(f"lm-eval could not load a dataset from the hub ({e}); connect to the hub, or pass "
                            "--data_dir with local files (OpenLLM/README.md)") from None
        raise
    return results, lm


# ---------------------------------------------------------------------------------------------
# 3. The scores

def summarize(results: dict, todo: list) -> dict:
    """The four cells on 0-100 (MMLU: the unweighted mean over its subjects), lm-eval's shot counts and case counts."""
    res, columns, subjects = results["results"], {}, {}
    for column, task, spec in todo:
        value = 100 * res[task][f"{spec['metric']},none"]
        if column == "mmlu":
            subjects[task.removeprefix("mmlu_")] = value
        else:
            columns[column] = value
    if subjects:
        columns["mmlu"] = sum(subjects.values()) / len(subjects)
    return {"columns": columns, "mmlu_subjects": subjects,
            "num_fewshot": {task: results["n-shot"][task] for _, task, _ in todo},
            "num_docs": {task: results["n-samples"][task]["effective"] for _, task, _ in todo}}


def write_samples(path: Path, results: dict, todo: list) -> None:
    """Per case: the prompt lm-eval built, the choices, their log-likelihoods and the case's metrics."""
    with open(path, "w", encoding="utf-8") as f:
        for _, task, _ in todo:
            for s in results["samples"][task]:
                lls = [float(r[0]) for r in s["filtered_resps"]]
                row = {"task": task, "doc_id": s["doc_id"], "target": s["target"], "context": s["arguments"][0][0],
                       "choices": [a[1] for a in s["arguments"]], "lls": lls,
                       **({"mc2": s["acc"]} if task == "truthfulqa_mc2" else  # lm-eval names mc2 `acc`
                          {k: s[k] for k in ("acc", "acc_norm") if k in s})}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv=None) -> dict:
    (args,) = parse_args(Args, argv, doc=__doc__)
    subjects = choose_subjects(args) if "mmlu" in args.columns else []
    todo = runs(args, subjects)
    if args.data_dir:
        check_data_dir(Path(args.data_dir), todo)
    for flag in ("model_name_or_path", "tokenizer"):
        if getattr(args, flag) and missing_path(getattr(args, flag)):
            raise UserError(f"--{flag} {getattr(args, flag)} does not exist; pass a model folder or a hub id")
    out = Path(args.output_dir)
    table = JsonlTable(out / "loglikelihoods.jsonl", key=lambda r: r["key"])
    check_settings(out, {"model": ({k: getattr(args, k) for k in MODEL_SETTINGS}, len(table) > 0)})
    print(f"general tasks: {','.join(args.columns)} ({len(todo)} lm-eval tasks), data "
          f"{args.data_dir or 'lm-eval hub datasets'}, no chat template")

    start = time.time()
    results, lm = evaluate(args, out, todo, table)
    import lm_eval

    summary = summarize(results, todo) | {"computed": lm.computed, "cached": lm.cached,
                                          "seconds": round(time.time() - start, 1),
                                          "lm_eval_version": lm_eval.__version__, "settings": asdict(args)}
    if args.log_samples:
        write_samples(out / "samples.jsonl", results, todo)
    (out / "scores.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    shown = ", ".join(f"{c} {v:.2f}" for c, v in summary["columns"].items())
    print(f"general: {shown} (0-100) over {sum(summary['num_docs'].values())} cases; this run computed "
          f"{lm.computed} log-likelihoods, served {lm.cached} from {table.path.name}, {summary['seconds']:.0f} s "
          f"-> {out / 'scores.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
