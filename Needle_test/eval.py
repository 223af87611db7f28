"""Needle test, step 3: score every answer 1-10.

Two scorers:
- `judge`: an OpenAI-compatible LLM judge compares the answer with the needle (the reference answer)
  on a 1-10 accuracy rubric; the same client, retries, re-asks and failure counting as LongBench-Chat.
- `match`: deterministic, offline and free: 10 if the needle's key phrase (--key_phrase, which must be part of
  the needle; default the whole needle of each prediction, i.e. of its prompts file) occurs in the answer,
  ignoring case and runs of whitespace, else 1.

Resumable: cells already scored are kept; failed judge cells are asked again on a re-run.

Run as:
    python Needle_test/eval.py --predictions_file runs/needle/pred/predictions.jsonl --scorer match \
        --key_phrase "temple garden" --output_dir runs/needle/pred
    (defaults come from Needle_test/config-eval.yaml; every key is also a flag; the judge's key comes
    from OPENAI_API_KEY only)

Inputs: predictions.jsonl from pred.py. Outputs: <output_dir>/scores.jsonl (context_length, depth_percent,
score or failure, scorer, judge_reply) and <output_dir>/summary.json (mean, per-length means, counts).
"""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from longalign.generation import JsonlTable, read_jsonl
from longalign.judge import judge, make_client
from longalign.scriptargs import UserError, parse_args, run_main

CONFIG = Path(__file__).with_name("config-eval.yaml")

# Our own rubric: how accurately the answer restates the hidden fact.
RUBRIC = """Below are a question, a reference answer, and an assistant's answer to the same question.
Rate how accurately the assistant's answer conveys the information in the reference answer, from 1 to 10:
10 - it gives the reference information completely and correctly;
7 - it gives the reference information with a small omission or a minor error;
4 - it is on topic but the key information is missing or wrong;
1 - it is unrelated, refuses, or contradicts the reference.
Explain in one sentence, then give the rating in double square brackets, for example [[7]].

Question: {question}
Reference answer: {needle}
Assistant's answer: {answer}
"""


@dataclass
class Args:
    predictions_file: str = field(default="runs/needle/pred/predictions.jsonl", metadata={"help": "predictions.jsonl from pred.py"})
    output_dir: str | None = field(default=None, metadata={"help": "where scores.jsonl and summary.json go (default: next to the predictions)"})
    scorer: str = field(default="judge", metadata={"help": "judge (an LLM rates 1-10) | match (key phrase found -> 10, else 1)"})
    key_phrase: str | None = field(default=None, metadata={"help": "match scorer: the phrase that must appear, a part of the needle (default: the whole needle of each prediction)"})
    judge_model: str = field(default="gpt-4", metadata={"help": "judge model name"})
    judge_base_url: str | None = field(default=None, metadata={"help": "judge endpoint; default OPENAI_BASE_URL, else api.openai.com"})
    judge_timeout: float = field(default=60.0, metadata={"help": "seconds before a judge request is abandoned and retried"})
    judge_max_retries: int = field(default=6, metadata={"help": "retries of one request on timeouts, 429 and 5xx (backoff)"})
    judge_max_reasks: int = field(default=5, metadata={"help": "re-asks when a reply has no [[rating]]; then the cell fails"})
    concurrency: int = field(default=4, metadata={"help": "parallel judge requests"})

    def __post_init__(self):
        if self.scorer not in ("judge", "match"):
            raise UserError(f"--scorer {self.scorer} is not judge or match; pick one")


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def match_score(answer: str, key_phrase: str) -> int:
    """10 if the key phrase is in the answer (case and whitespace ignored), else 1."""
    return 10 if normalize(key_phrase.rstrip(".")) in normalize(answer) else 1


def check_key_phrase(args: Args, preds: list[dict]) -> None:
    """An explicit --key_phrase must be part of the needle the prompts hid: a phrase left from another needle
    (the default one) would score a perfect answer 1, silently."""
    if args.scorer != "match" or not args.key_phrase:
        return
    for needle in sorted({p["needle"] for p in preds}):
        if normalize(args.key_phrase.rstrip(".")) not in normalize(needle):
            raise UserError(f"--key_phrase {args.key_phrase!r} does not occur in the needle {needle!r} of "
                            f"{args.predictions_file}; pass a phrase of that needle, or none to match the whole needle")


def main(argv=None):
    (args,) = parse_args(Args, argv, default_config=CONFIG)
    preds = read_jsonl(Path(args.predictions_file), "Needle_test/pred.py")
    check_key_phrase(args, preds)
    out = Path(args.output_dir or Path(args.predictions_file).parent)
    table = JsonlTable(out / "scores.jsonl", key=lambda r: (r["context_length"], r["depth_percent"]),
                       keep=lambda r: r["score"] is not None and r["scorer"] == args.scorer)
    todo = [p for p in preds if (p["context_length"], p["depth_percent"]) not in table]
    print(f"needle scores ({args.scorer}): {len(preds) - len(todo)} done, {len(todo)} to score -> {table.path}")
    base = lambda p: {"context_length": p["context_length"], "depth_percent": p["depth_percent"],  # noqa: E731
                      "scorer": args.scorer}
    if args.scorer == "match":
        for p in todo:
            table.append(base(p) | {"score": match_score(p["prediction"], args.key_phrase or p["needle"]),
                                    "failure": None, "key_phrase": args.key_phrase or p["needle"]})
    elif todo:
        client = make_client(args.judge_base_url, args.judge_timeout, args.judge_max_retries)

        def one(p):
            prompt = RUBRIC.format(question=p["retrieval_question"], needle=p["needle"], answer=p["prediction"])
            return base(p) | {"judge_model": args.judge_model,
                              **judge(client, args.judge_model, prompt, max_reasks=args.judge_max_reasks).as_record()}

        with ThreadPoolExecutor(args.concurrency) as pool:
            for row in tqdm(pool.map(one, todo), total=len(todo), desc="needle judge"):
                table.append(row)

    rows = [table.rows[k] for k in ((p["context_length"], p["depth_percent"]) for p in preds) if k in table]
    scores = [r["score"] for r in rows if r["score"] is not None]
    lengths = sorted({r["context_length"] for r in rows})
    per_length = {str(n): sum(s) / len(s) for n in lengths
                  if (s := [r["score"] for r in rows if r["context_length"] == n and r["score"] is not None])}
    summary = {"mean": sum(scores) / len(scores) if scores else None, "num_scored": len(scores),
               "num_failed": len(preds) - len(scores), "per_length": per_length, "settings": asdict(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    mean = "n/a" if summary["mean"] is None else f"{summary['mean']:.2f}"
    print(f"needle mean score {mean} (1-10, {args.scorer}) over {len(scores)} cells, {summary['num_failed']} failed "
          f"-> {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
