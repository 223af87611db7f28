"""MT-Bench: a model answers 80 two-turn questions, an LLM judge grades each turn 1-10 (FastChat's single-answer grading).

The paper reports MT-Bench to show that long-context alignment keeps short chat quality. As FastChat's
llm_judge does: the model answers turn 1, then turn 2 with the conversation so far (q1, its answer, q2),
at the temperature of the question's category, at most 1024 new tokens; the judge (GPT-4, temperature 0,
at most 2048 tokens) grades turn 1 with the prompt `single-v1` and turn 2 with `single-v1-multi-turn`,
or with their reference variants `single-math-v1(-multi-turn)` and GPT-4's reference answers for math,
reasoning and coding; the score is the mean over all graded (question, turn) pairs, also per turn and
per category. MT_Bench/README.md lists what matches FastChat and what differs.

The questions, judge prompts and reference answers are downloaded once from FastChat's repository at a
pinned commit (checked by sha256) into --cache_dir, or read from --mt_bench_dir; they are never committed.

Run as:
    OPENAI_API_KEY=... python MT_Bench/eval.py --model_name_or_path THUDM/LongAlign-7B-64k \\
        --output_dir runs/mt_bench/longalign-7b [--mt_bench_dir LOCAL] [--judge_model gpt-4]

Inputs (downloaded, or --mt_bench_dir holding them flat or in FastChat's llm_judge/data layout):
    question.jsonl                {"question_id", "category", "turns": [q1, q2], "reference"?}
    judge_prompts.jsonl           {"name", "type", "system_prompt", "prompt_template", "output_format", ...}
    reference_answer/gpt-4.jsonl  {"question_id", "choices": [{"turns": [r1, r2]}]} (math, reasoning, coding)
Outputs (--output_dir):
    settings.json      generation and judge settings (a re-run with other settings is refused)
    answers.jsonl      one row per question, FastChat's model-answer fields: {question_id, answer_id, model_id,
                       choices: [{index, turns: [a1, a2]}], tstamp} + category, temperature, prompt_tokens, template
    judgements.jsonl   one row per (question_id, turn, run): {score | failure, judge: [model, prompt name],
                       user_prompt, judge_reply, asks, answer_id, ...}
    scores.json        mean, turn_1, turn_2, per_category, num_scored, num_failed, judge_requests (this run),
                       generated (this run), judge_model, settings
"""

import hashlib
import json
import string
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from longalign.generation import GenerationArgs, Generator, JsonlTable, check_settings
from longalign.judge import JudgeArgs, api_key, judge, make_client
from longalign.scriptargs import UserError, parse_args, run_main

# lm-sys/FastChat at a pinned commit (main of 2025-04-12). Read from its history: question.jsonl and
# reference_answer/gpt-4.jsonl were added in b494d0c (2023-06-16, "Release MT-bench code", #1722) and never changed;
# judge_prompts.jsonl last changed in 7ad1d63 (2023-07-04), which edited only the four pairwise prompts' system
# prompts: the single-answer prompts used here are those of b494d0c too.
FASTCHAT_COMMIT = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
FASTCHAT_DATA_URL = f"https://raw.githubusercontent.com/lm-sys/FastChat/{FASTCHAT_COMMIT}/fastchat/llm_judge/data"
# our name of each file -> (its path under FastChat's llm_judge/data, its sha256 at FASTCHAT_COMMIT)
DATA_FILES = {
    "question.jsonl": ("mt_bench/question.jsonl", "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"),
    "judge_prompts.jsonl": ("judge_prompts.jsonl", "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"),
    "reference_answer/gpt-4.jsonl": ("mt_bench/reference_answer/gpt-4.jsonl",
                                     "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"),
}

# FastChat's facts (fastchat/llm_judge/common.py): the categories graded against a reference answer, and
# the sampling temperature of each category (0.7 for one it does not list; below 1e-4 = greedy).
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7
JUDGE_MAX_TOKENS = 2048  # FastChat's for OpenAI judges
TURNS = (1, 2)

# The four single-answer judge prompts, and the placeholders FastChat fills in each (ref_answer_* only
# for the reference variants). The second one of each pair is the answer the judge grades.
JUDGE_FIELDS = {
    "single-v1": {"question", "answer"},
    "single-math-v1": {"question", "answer", "ref_answer_1"},
    "single-v1-multi-turn": {"question_1", "answer_1", "question_2", "answer_2"},
    "single-math-v1-multi-turn": {"question_1", "answer_1", "question_2", "answer_2", "ref_answer_1", "ref_answer_2"},
}


def judge_prompt_name(category: str, turn: int) -> str:
    return ("single-math-v1" if category in NEED_REF_CATS else "single-v1") + ("-multi-turn" if turn == 2 else "")


@dataclass
class Args(GenerationArgs, JudgeArgs):
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "model folder or hub id (our model files for llama/chatglm types, AutoModelForCausalLM "
                "otherwise); with --gen_base_url only its tokenizer is loaded"})
    output_dir: str = field(default="runs/mt_bench", metadata={"help": "where the outputs go"})
    mt_bench_dir: str | None = field(default=None, metadata={
        "help": "local folder with question.jsonl, judge_prompts.jsonl and reference_answer/gpt-4.jsonl (or "
                "FastChat's fastchat/llm_judge/data folder); default: download them"})
    mt_bench_url: str = field(default=FASTCHAT_DATA_URL, metadata={
        "help": "where to download from: FastChat's llm_judge/data folder (the default pins a commit and checks "
                "each file's sha256; another URL is trusted as it is)"})
    cache_dir: str = field(default="data/mt_bench", metadata={"help": "where downloaded files are kept"})
    limit: int | None = field(default=None, metadata={"help": "only the first N questions (default: all 80)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "longest answer per turn in tokens (FastChat: 1024)"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, reset for every turn (FastChat: 0 for its one choice)"})
    do_judge: bool = field(default=True, metadata={"help": "run the judge after generation (false: answers only)"})
    judge_runs: int = field(default=1, metadata={
        "help": "judgements per (question, turn), averaged before the means (FastChat: 1; the paper judged twice: "
                "scripts/eval_all.py passes 2)"})

    def __post_init__(self):
        super().__post_init__()
        if min(self.concurrency, self.max_new_tokens, self.judge_runs, self.limit or 1) < 1:
            raise UserError("--concurrency, --max_new_tokens, --judge_runs and --limit must be >= 1; fix the flag")


# ---------------------------------------------------------------------------------------------
# 1. The data: downloaded once at the pinned commit (or a local copy), checked against FastChat's schema

def fetch(base_url: str, cache_dir: Path) -> dict[str, Path]:
    """The three files, downloaded into cache_dir once; the pinned default URL's files must match their sha256."""
    base_url = base_url.rstrip("/")
    pinned = base_url == FASTCHAT_DATA_URL
    folder = cache_dir / (f"fastchat-{FASTCHAT_COMMIT[:12]}" if pinned else
                          "url-" + hashlib.sha256(base_url.encode()).hexdigest()[:12])
    files = {}
    for name, (remote, sha256) in DATA_FILES.items():
        path, url = folder / name, f"{base_url}/{remote}"
        if not path.is_file():
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = response.read()
            except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts; ValueError: not a URL
                reason = e.reason if type(e) is urllib.error.URLError else e  # an HTTPError says its status
                raise UserError(f"could not download {url} ({reason}); without network, pass "
                                "--mt_bench_dir with a local copy of question.jsonl, judge_prompts.jsonl and "
                                "reference_answer/gpt-4.jsonl (MT_Bench/README.md says where to get them)") from None
            if pinned and hashlib.sha256(data).hexdigest() != sha256:
                raise UserError(f"{url} is not the file of FastChat commit {FASTCHAT_COMMIT[:12]} (its sha256 "
                                "differs); retry, or pass --mt_bench_dir with a copy you trust")
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)  # a killed download never leaves a truncated file under the final name
        files[name] = path
    return files


def local_files(root: Path) -> dict[str, Path]:
    """The three files of a local folder: at their own names, or where a FastChat checkout keeps them."""
    files = {}
    for name, (fastchat_path, _) in DATA_FILES.items():
        found = [p for p in (root / name, root / fastchat_path) if p.is_file()]
        if not found:
            raise UserError(f"{root} has no {name} (nor {fastchat_path}); --mt_bench_dir needs question.jsonl, "
                            "judge_prompts.jsonl and reference_answer/gpt-4.jsonl (MT_Bench/README.md)")
        files[name] = found[0]
    return files


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a JSONL file."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n} is not valid JSON ({e.msg}); fix or re-download the file") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {n} is not a JSON object; fix or re-download the file")
        rows.append((n, row))
    return rows


def load_questions(path: Path) -> list[dict]:
    questions, seen = [], set()
    for n, q in read_rows(path):
        where = f"{path} line {n}"
        if not isinstance(q.get("question_id"), int | str) or not isinstance(q.get("category"), str):
            raise UserError(f"{where} needs a question_id (integer) and a category (string); fix the file")
        turns = q.get("turns")
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) and t for t in turns)):
            raise UserError(f"{where} needs turns, a list of the 2 user turns of MT-Bench; fix the file")
        if q["question_id"] in seen:
            raise UserError(f"{where} repeats question_id {q['question_id']}; every question needs its own")
        seen.add(q["question_id"])
        questions.append(q)
    if not questions:
        raise UserError(f"{path} holds no questions; re-download it or fix --mt_bench_dir")
    return questions


def load_judge_prompts(path: Path) -> dict[str, dict]:
    prompts = {row.get("name"): row for _, row in read_rows(path)}
    for name, allowed in JUDGE_FIELDS.items():
        p = prompts.get(name)
        if p is None:
            raise UserError(f"{path} has no judge prompt named {name}; MT-Bench's single-answer grading needs "
                            f"{', '.join(JUDGE_FIELDS)}")
        if p.get("type") != "single" or p.get("output_format") != "[[rating]]" or not isinstance(
                p.get("system_prompt"), str) or not isinstance(p.get("prompt_template"), str):
            raise UserError(f"{path}: prompt {name} needs type single, output_format [[rating]], a system_prompt "
                            "and a prompt_template; fix the file")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(p["prompt_template"]) if f is not None}
        except ValueError as e:
            raise UserError(f"{path}: prompt {name} has a malformed {{}} field ({e}); double literal braces") from None
        graded = "answer_2" if name.endswith("multi-turn") else "answer"
        if not fields <= allowed or graded not in fields:
            raise UserError(f"{path}: prompt {name} has the fields {sorted(fields)}; it may use only "
                            f"{sorted(allowed)} and must hold {{{graded}}}")
    return prompts


def load_references(path: Path, questions: list[dict]) -> dict:
    """question_id -> [reference turn 1, reference turn 2] for the questions of the reference categories."""
    refs = {}
    for n, row in read_rows(path):
        try:
            turns = row["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            turns = None
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns)):
            raise UserError(f"{path} line {n} needs choices[0].turns, the 2 reference answers; fix the file")
        refs[row.get("question_id")] = turns
    for q in questions:
        if q["category"] in NEED_REF_CATS and q["question_id"] not in refs:
            raise UserError(f"{path} has no reference answer for question {q['question_id']} ({q['category']}); "
                            f"the judge grades {', '.join(NEED_REF_CATS)} against one; fix the file")
    return refs


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# 2. Answers: turn 2 is answered with the conversation so far (resumable: one row per finished question)

def generate_answers(args: Args, questions: list[dict], table: JsonlTable) -> int:
    todo = [q for q in questions if q["question_id"] not in table]
    print(f"answers: {len(questions) - len(todo)} done, {len(todo)} to generate -> {table.path}")
    if not todo:
        return 0
    if not args.model_name_or_path:
        raise UserError("--model_name_or_path is needed to generate the answers")
    gen = Generator.from_args(args, args.max_new_tokens, DEFAULT_TEMPERATURE, args.seed)
    model_id = args.gen_model or Path(args.model_name_or_path).name

    def one(q):
        temperature = CATEGORY_TEMPERATURE.get(q["category"], DEFAULT_TEMPERATURE)
        messages, answers, prompt_tokens = [], [], []
        for text in q["turns"]:
            messages.append({"role": "user", "content": text})
            out = gen.generate(list(messages), temperature=temperature)
            messages.append({"role": "assistant", "content": out["text"]})
            answers.append(out["text"])
            prompt_tokens.append(out["prompt_tokens"])
        return {"question_id": q["question_id"], "answer_id": uuid.uuid4().hex, "model_id": model_id,
                "choices": [{"index": 0, "turns": answers}], "tstamp": time.time(), "category": q["category"],
                "temperature": temperature, "prompt_tokens": prompt_tokens, "template": gen.template}

    # In-process generation is one question at a time; a server takes --concurrency requests at once.
    workers = args.concurrency if args.gen_base_url else 1
    import openai

    try:
        with ThreadPoolExecutor(workers) as pool:
            for row in tqdm(pool.map(one, todo), total=len(todo), desc="generate", unit="question"):
                table.append(row)
    except openai.APIError as e:
        raise UserError(f"the generation server at {args.gen_base_url} failed after retries ({e}); "
                        "re-run the same command to continue") from None
    return len(todo)


# ---------------------------------------------------------------------------------------------
# 3. Judgements: one per (question, turn) (resumable: a finished judgement is never asked again)

def user_prompt(prompt: dict, q: dict, answers: list[str], refs: list[str] | None, turn: int) -> str:
    """The judge prompt filled as FastChat fills it (turn 2 sees the whole conversation)."""
    if turn == 1:
        values = {"question": q["turns"][0], "answer": answers[0]}
    else:
        values = {"question_1": q["turns"][0], "question_2": q["turns"][1],
                  "answer_1": answers[0], "answer_2": answers[1]}
    if refs is not None:
        values |= {"ref_answer_1": refs[0]} | ({"ref_answer_2": refs[1]} if turn == 2 else {})
    return prompt["prompt_template"].format(**values)


def run_judge(args: Args, questions: list[dict], prompts: dict, refs: dict, answers: JsonlTable,
              table: JsonlTable) -> int:
    """Judge what is missing; returns the chat requests sent (first asks and re-asks)."""
    todo = [(q, t, r) for q in questions for t in TURNS for r in range(args.judge_runs)
            if (q["question_id"], t, r) not in table]
    print(f"judgements: {2 * len(questions) * args.judge_runs - len(todo)} done, {len(todo)} to ask "
          f"({args.judge_model}, {args.judge_runs} per turn) -> {table.path}")
    if not todo:
        return 0
    client = make_client(args.judge_base_url, args.judge_timeout, args.judge_max_retries)

    def one(item):
        q, turn, run = item
        name = judge_prompt_name(q["category"], turn)
        answer = answers.rows[q["question_id"]]
        ref = refs[q["question_id"]] if q["category"] in NEED_REF_CATS else None
        text = user_prompt(prompts[name], q, answer["choices"][0]["turns"], ref, turn)
        j = judge(client, args.judge_model, text, prompts[name]["system_prompt"], args.judge_max_reasks,
                  temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)
        return {"question_id": q["question_id"], "turn": turn, "run": run, "category": q["category"],
                "model": answer["model_id"], "answer_id": answer["answer_id"], "judge": [args.judge_model, name],
                "user_prompt": text, **j.as_record(), "tstamp": time.time()}

    asked = 0
    with ThreadPoolExecutor(args.concurrency) as pool:
        for row in tqdm(pool.map(one, todo), total=len(todo), desc="judge", unit="judgement"):
            table.append(row)
            asked += row["asks"]
    return asked


# ---------------------------------------------------------------------------------------------
# 4. Scores: FastChat's show_result: the mean over every graded (question, turn), and per turn

def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(args: Args, questions: list[dict], judgements: JsonlTable, asked: int, generated: int) -> dict:
    # a (question, turn)'s score: the mean of its scored judgements (--judge_runs of them; the paper: 2)
    rows = []
    for q in questions:
        for t in TURNS:
            got = [judgements.rows[k]["score"] for r in range(args.judge_runs) if (k := (q["question_id"], t, r)) in judgements]
            rows.append({"score": mean([x for x in got if x is not None]), "category": q["category"], "turn": t})
    scored = [r for r in rows if r["score"] is not None]

    def means(rs):
        return {"mean": mean([r["score"] for r in rs]),
                **{f"turn_{t}": mean([r["score"] for r in rs if r["turn"] == t]) for t in TURNS}}

    categories = dict.fromkeys(q["category"] for q in questions)  # in the order of question.jsonl
    per_category = {c: means([r for r in scored if r["category"] == c])
                    | {"num_scored": sum(r["category"] == c for r in scored)} for c in categories}
    return {**means(scored), "per_category": per_category, "num_questions": len(questions),
            "num_scored": len(scored), "num_failed": len(rows) - len(scored), "judge_requests": asked,
            "generated": generated, "judge_model": args.judge_model, "settings": asdict(args)}


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv=None) -> dict:
    (args,) = parse_args(Args, argv, doc=__doc__)
    out = Path(args.output_dir)
    files = local_files(Path(args.mt_bench_dir)) if args.mt_bench_dir else fetch(args.mt_bench_url, Path(args.cache_dir))
    questions = load_questions(files["question.jsonl"])[:args.limit]
    prompts = load_judge_prompts(files["judge_prompts.jsonl"])
    refs = load_references(files["reference_answer/gpt-4.jsonl"], questions)
    print(f"MT-Bench: {len(questions)} questions from {files['question.jsonl']}")

    answers = JsonlTable(out / "answers.jsonl", key=lambda r: r["question_id"])

    # A judgement stands only for the answer it graded: one whose answer is gone (a killed run regenerates it) goes.
    def keep(r):
        current = answers.rows.get(r["question_id"], {}).get("answer_id") == r.get("answer_id")
        return current and (r["score"] is not None or not args.retry_failed)

    judgements = JsonlTable(out / "judgements.jsonl", key=lambda r: (r["question_id"], r["turn"], r.get("run", 0)),
                            keep=keep)
    if args.do_judge and any((q["question_id"], t, r) not in judgements for q in questions for t in TURNS
                             for r in range(args.judge_runs)):
        api_key(", or pass --do_judge false to generate the answers only")  # before hours of generation
    gen_settings = {k: getattr(args, k) for k in ("model_name_or_path", "tokenizer", "template", "gen_base_url",
                                                  "gen_model", "max_new_tokens", "seed")}
    judge_settings = {"judge_model": args.judge_model, "judge_prompts_sha256": sha256_file(files["judge_prompts.jsonl"]),
                      "references_sha256": sha256_file(files["reference_answer/gpt-4.jsonl"])}
    check_settings(out, {"generation": (gen_settings | {"questions_sha256": sha256_file(files["question.jsonl"])},
                                        len(answers) > 0),
                         "judge": (judge_settings, len(judgements) > 0)})

    generated = generate_answers(args, questions, answers)
    if not args.do_judge:
        print(f"generated {generated}; judge skipped (--do_judge false): run the same command with OPENAI_API_KEY "
              "set and without --do_judge false to score")
        return {"generated": generated, "num_questions": len(questions), "judge_requests": 0}
    asked = run_judge(args, questions, prompts, refs, answers, judgements)
    summary = summarize(args, questions, judgements, asked, generated)
    (out / "scores.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    cats = ", ".join(f"{c} {fmt(v['mean'])}" for c, v in summary["per_category"].items())
    print(f"MT-Bench mean {fmt(summary['mean'])} (1-10; turn 1 {fmt(summary['turn_1'])}, turn 2 "
          f"{fmt(summary['turn_2'])}) over {summary['num_scored']} graded turns, {summary['num_failed']} failed; "
          f"{cats}; this run generated {generated} and sent {asked} judge requests -> {out / 'scores.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
