"""LongBench-Chat: a model answers long real-world queries, an LLM judge scores each answer 1-10.

The judge (GPT-4 in the paper) sees the question, the reference answer and three answers already
scored by humans (few-shot), then rates the model's answer; the paper reports the MEAN score, each
answer judged twice. This script generates the answers (in-process or through any OpenAI-compatible
server), asks any OpenAI-compatible judge, and writes every step to files so a re-run picks up where
the last one stopped.

Run as:
    OPENAI_API_KEY=... python LongBench_Chat/eval.py --model_name_or_path THUDM/LongAlign-7B-64k \
        --data_dir data/longbench_chat --output_dir runs/lbc/longalign-7b [--judge_runs 2]

Inputs (--data_dir; see LongBench_Chat/README.md for the published files):
    test_cases.json  [{"idx", "prompt", "query", "answer"}]
    few_shots.json   [[{"answer", "score"} x 3] per case, entry idx-1 for case idx]
    prompt_fs.txt    judge prompt, 9 positional {} fields: question, reference, (answer, score) x 3, answer
Outputs (--output_dir):
    settings.json      the generation and judge settings (a re-run with other settings is refused)
    predictions.jsonl  {idx, lang, prediction, input_tokens, truncated, prompt_tokens, template}
    judgements.jsonl   {idx, run, score | failure, judge_reply, judge_model, system_fingerprint, asks}
    scores.json        mean (1-10, over scored cases), sum, num_scored, num_failed, per-language means
"""

import json
import random
import re
import string
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from longalign.generation import GenerationArgs, Generator, JsonlTable, check_settings, truncate_text_middle
from longalign.judge import JudgeArgs, api_key, judge, make_client
from longalign.scriptargs import UserError, parse_args, run_main

JUDGE_SYSTEM_PROMPT = "You are an impartial, careful grader of answers to questions about long documents."


@dataclass
class Args(GenerationArgs, JudgeArgs):
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "model folder or hub id (our model files for llama/chatglm types, AutoModelForCausalLM "
                "otherwise); with --gen_base_url only its tokenizer is loaded, for truncation"})
    data_dir: str = field(default="data/longbench_chat", metadata={
        "help": "folder with test_cases.json, few_shots.json and prompt_fs.txt"})
    output_dir: str = field(default="runs/longbench_chat", metadata={"help": "where the outputs go"})
    max_length: int = field(default=64000, metadata={
        "help": "longest input in tokens of the model's tokenizer; longer ones keep their head and tail halves"})
    max_new_tokens: int = field(default=1024, metadata={"help": "longest answer in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature; 0 = greedy"})
    seed: int = field(default=42, metadata={"help": "seed of generation (reset per case) and few-shot shuffling"})
    lang: str = field(default="all", metadata={"help": "all | en | zh: which cases to run"})
    do_judge: bool = field(default=True, metadata={"help": "run the judge after generation (false: predictions only)"})
    judge_runs: int = field(default=2, metadata={"help": "judgements per answer, averaged (the paper: 2)"})
    shuffle_few_shots: bool = field(default=True, metadata={
        "help": "shuffle the 3 scored examples per judgement (seeded by --seed, case and run), as the paper does"})

    def __post_init__(self):
        super().__post_init__()
        if self.lang not in ("all", "en", "zh"):
            raise UserError(f"--lang {self.lang} is not one of all|en|zh; pick one")
        if self.judge_runs < 1 or self.concurrency < 1 or self.max_length < 2:
            raise UserError("--judge_runs and --concurrency must be >= 1 and --max_length >= 2; fix the flag")


# ---------------------------------------------------------------------------------------------
# 1. The data: three files, checked against the published schema

def read_json(path: Path):
    if not path.is_file():
        raise UserError(f"{path} does not exist; put the LongBench-Chat files in --data_dir "
                        "(LongBench_Chat/README.md says where to get them)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {e.lineno} is not valid JSON ({e.msg}); fix or re-download the file") from None


def language(text: str) -> str:
    """zh if the question has CJK characters, else en (the published cases carry no language field)."""
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def load_data(data_dir: Path, lang: str) -> tuple[list[dict], list, str]:
    cases = read_json(data_dir / "test_cases.json")
    shots = read_json(data_dir / "few_shots.json")
    if not isinstance(cases, list) or not cases:
        raise UserError(f"{data_dir / 'test_cases.json'} must be a non-empty JSON list of cases")
    if not isinstance(shots, list):
        raise UserError(f"{data_dir / 'few_shots.json'} must be a JSON list (one list of scored answers per case)")
    for i, case in enumerate(cases):
        where = f"{data_dir / 'test_cases.json'} item {i}"
        if not isinstance(case, dict):
            raise UserError(f"{where} is not an object; each case needs idx, prompt, query and answer")
        missing = [k for k in ("idx", "prompt", "query", "answer") if k not in case]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}; each case needs idx, prompt, query and answer")
        if not isinstance(case["idx"], int) or not 1 <= case["idx"] <= len(shots):
            raise UserError(f"{where} has idx {case['idx']!r} but few_shots.json has {len(shots)} entries; "
                            "idx must be an integer from 1 pointing at its few-shot entry")
        entry = shots[case["idx"] - 1]
        if not isinstance(entry, list) or len(entry) != 3 or not all(
                isinstance(s, dict) and isinstance(s.get("answer"), str) and isinstance(s.get("score"), int | float)
                for s in entry):
            raise UserError(f"{data_dir / 'few_shots.json'} entry {case['idx'] - 1} must be a list of 3 "
                            '{"answer": str, "score": number} objects; fix the file')
        case["lang"] = case.get("lang") or language(case["query"])
    if len({c["idx"] for c in cases}) != len(cases):
        raise UserError(f"{data_dir / 'test_cases.json'} repeats an idx; every case needs its own idx")
    template_path = data_dir / "prompt_fs.txt"
    if not template_path.is_file():
        raise UserError(f"{template_path} does not exist; put the judge prompt (prompt_fs.txt) in --data_dir")
    template = template_path.read_text(encoding="utf-8")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise UserError(f"{template_path} has a malformed {{}} field ({e}); double literal braces as {{{{ }}}}") from None
    if fields != [""] * 9:
        raise UserError(f"{template_path} has {len(fields)} fields {fields[:3]}...; it needs exactly 9 empty {{}} "
                        "(question, reference, 3 x (answer, score), answer to grade)")
    return [c for c in cases if lang in ("all", c["lang"])], shots, template


# ---------------------------------------------------------------------------------------------
# 2. Settings: a re-run must use the settings the files were made with

def settings(args: Args, have_predictions: bool, have_judgements: bool) -> dict:
    """The generation and the judge settings (generation.check_settings refuses to mix them)."""
    # "model_path": the key results written before the flag was renamed carry, so their re-runs still match
    gen = {"model_path": args.model_name_or_path} | {k: getattr(args, k) for k in (
        "max_length", "template", "gen_base_url", "gen_model", "max_new_tokens", "temperature", "seed")}
    jud = {k: getattr(args, k) for k in ("judge_model", "shuffle_few_shots", "seed")}
    return {"generation": (gen, have_predictions), "judge": (jud, have_judgements)}


# ---------------------------------------------------------------------------------------------
# 3. Predictions (resumable: finished cases are never generated again)

def predict(args: Args, cases: list[dict], table: JsonlTable) -> int:
    todo = [c for c in cases if c["idx"] not in table]
    print(f"predictions: {len(cases) - len(todo)} done, {len(todo)} to generate -> {table.path}")
    if not todo:
        return 0
    if not args.model_name_or_path:
        raise UserError("--model_name_or_path is needed to generate (its tokenizer measures --max_length)")
    gen = Generator.from_args(args, args.max_new_tokens, args.temperature, args.seed)

    def answer(batch):
        cut = [truncate_text_middle(case["prompt"], gen.tokenizer, args.max_length) for case in batch]
        outs = gen.generate_batch([[{"role": "user", "content": text}] for text, _, _ in cut])
        return [{"idx": case["idx"], "lang": case["lang"], "prediction": out["text"], "input_tokens": n_tokens,
                 "truncated": truncated, "prompt_tokens": out["prompt_tokens"], "template": gen.template}
                for case, (_, n_tokens, truncated), out in zip(batch, cut, outs, strict=True)]

    # In-process: --batch_size cases at a time (one padded batch when greedy); a server takes --concurrency
    # requests at once.
    size, workers = (1, args.concurrency) if args.gen_base_url else (args.batch_size, 1)
    if size > 1:  # a batch is padded to its longest prompt: batch cases of similar length
        todo = sorted(todo, key=lambda c: len(c["prompt"]))
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    import openai

    try:
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), desc="generate") as bar:
            for rows in pool.map(answer, batches):
                for row in rows:
                    table.append(row)
                bar.update(len(rows))
    except openai.APIError as e:
        raise UserError(f"the generation server at {args.gen_base_url} failed after retries ({e}); "
                        "re-run the same command to continue") from None
    return len(todo)


# ---------------------------------------------------------------------------------------------
# 4. Judgements (resumable: a finished judgement is never asked again)

def judge_prompt(template: str, case: dict, shots: list[dict], prediction: str, rng: random.Random | None) -> str:
    shots = list(shots)
    if rng is not None:
        rng.shuffle(shots)
    filled = [x for s in shots for x in (s["answer"], s["score"])]
    return template.format(case["query"], case["answer"], *filled, prediction)


def run_judge(args: Args, cases: list[dict], shots: list, template: str, predictions: JsonlTable,
              table: JsonlTable) -> int:
    todo = [(c, r) for c in cases for r in range(args.judge_runs) if (c["idx"], r) not in table]
    print(f"judgements: {len(cases) * args.judge_runs - len(todo)} done, {len(todo)} to ask "
          f"({args.judge_model}, {args.judge_runs} per case) -> {table.path}")
    if not todo:
        return 0
    client = make_client(args.judge_base_url, args.judge_timeout, args.judge_max_retries)

    def one(item):
        case, run = item
        # A seeded shuffle per (seed, case, run): the same order whatever was resumed or run in parallel.
        rng = random.Random(f"{args.seed}-{case['idx']}-{run}") if args.shuffle_few_shots else None
        prompt = judge_prompt(template, case, shots[case["idx"] - 1], predictions.rows[case["idx"]]["prediction"], rng)
        j = judge(client, args.judge_model, prompt, JUDGE_SYSTEM_PROMPT, args.judge_max_reasks)
        return {"idx": case["idx"], "run": run, "lang": case["lang"], "judge_model": args.judge_model, **j.as_record()}

    with ThreadPoolExecutor(args.concurrency) as pool:
        for row in tqdm(pool.map(one, todo), total=len(todo), desc="judge"):
            table.append(row)
    return len(todo)


# ---------------------------------------------------------------------------------------------
# 5. Scores: a case's score is the mean of its scored judgements; the benchmark score the mean of those

def summarize(args: Args, cases: list[dict], judgements: JsonlTable) -> dict:
    per_case = {}
    for c in cases:
        got = [judgements.rows[(c["idx"], r)]["score"] for r in range(args.judge_runs) if (c["idx"], r) in judgements]
        scored = [s for s in got if s is not None]
        per_case[c["idx"]] = (c["lang"], sum(scored) / len(scored) if scored else None)
    scores = [s for _, s in per_case.values() if s is not None]
    by_lang = {}
    for lang in sorted({lang for lang, _ in per_case.values()}):
        ls = [s for la, s in per_case.values() if la == lang and s is not None]
        by_lang[lang] = {"mean": sum(ls) / len(ls) if ls else None, "num_scored": len(ls)}
    failed = [r for r in judgements.rows.values() if r["score"] is None and r["idx"] in per_case]
    return {
        "mean": sum(scores) / len(scores) if scores else None, "sum": sum(scores),
        "num_cases": len(cases), "num_scored": len(scores), "num_failed": len(cases) - len(scores),
        "judgements_failed": len(failed), "per_language": by_lang, "judge_model": args.judge_model,
        "per_case": {str(i): s for i, (_, s) in per_case.items()}, "settings": asdict(args),
    }


def main(argv=None):
    (args,) = parse_args(Args, argv)
    out = Path(args.output_dir)
    cases, shots, template = load_data(Path(args.data_dir), args.lang)
    predictions = JsonlTable(out / "predictions.jsonl", key=lambda r: r["idx"])
    judgements = JsonlTable(out / "judgements.jsonl", key=lambda r: (r["idx"], r["run"]),
                            keep=(lambda r: r["score"] is not None) if args.retry_failed else None)
    if args.do_judge and any((c["idx"], r) not in judgements for c in cases for r in range(args.judge_runs)):
        api_key(", or pass --do_judge false to generate the answers only")  # before hours of generation
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings(args, len(predictions) > 0, len(judgements) > 0))
    print(f"LongBench-Chat: {len(cases)} cases (--lang {args.lang}) from {args.data_dir}")

    generated = predict(args, cases, predictions)
    if not args.do_judge:
        flags = list(sys.argv[1:] if argv is None else argv)
        if "--do_judge" in flags:  # drop "--do_judge false" from the command we suggest
            i = flags.index("--do_judge")
            del flags[i:i + 2 if flags[i + 1:i + 2] in (["false"], ["False"]) else i + 1]
        flags = " ".join(flags)
        print(f"generated {generated}; judge skipped (--do_judge false). To score, configure a judge and run:\n"
              f"  OPENAI_API_KEY=... python LongBench_Chat/eval.py {flags}")
        return None
    asked = run_judge(args, cases, shots, template, predictions, judgements)
    summary = summarize(args, cases, judgements)
    (out / "scores.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    mean = "n/a" if summary["mean"] is None else f"{summary['mean']:.2f}"
    langs = ", ".join(f"{k} {v['mean']:.2f}" for k, v in summary["per_language"].items() if v["mean"] is not None)
    print(f"LongBench-Chat mean {mean} (1-10) over {summary['num_scored']} scored cases, "
          f"{summary['num_failed']} failed; per language: {langs or 'n/a'}; "
          f"this run generated {generated} and judged {asked} -> {out / 'scores.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
