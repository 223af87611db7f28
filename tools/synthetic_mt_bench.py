"""Offline MT-Bench-shaped data, made by the project (no published question or judge prompt is copied).

FastChat's MT-Bench ships three files; this writes files of the same schema, in the layout
`MT_Bench/eval.py --mt_bench_dir` reads:

    question.jsonl                {"question_id": 81, "category": "writing", "turns": [q1, q2]}, one per line;
                                  the reference categories (math, reasoning, coding) also carry
                                  "reference": [short answer 1, short answer 2], as FastChat's do
    reference_answer/gpt-4.jsonl  {"question_id", "answer_id", "model_id", "choices": [{"index": 0,
                                  "turns": [r1, r2]}], "tstamp"} for the reference categories: what
                                  FastChat's judge reads as the reference (full sentences here, so a test
                                  can tell them from the short "reference" of question.jsonl)
    judge_prompts.jsonl           the four single-answer prompts FastChat's judge uses, with FastChat's
                                  names, fields and template placeholders, in our own wording

The 8 categories of MT-Bench take turns (question i has category i mod 8), so any 8 consecutive
questions hold all of them. Every turn ends with a fault-server marker (tools.fault_server): the turn
of question i (from 0) is judge case 2i + turn, rated by the planned score (3 x case) mod 10 + 1 unless
`plan` says otherwise, so a run against the fault server has scores known in advance. Our two-turn
judge prompts quote the second question first, so the marker the server finds first in a turn-2
judgement is that turn's.

Run as:
    python -m tools.synthetic_mt_bench --output_dir data/mt_bench_synthetic [--num_questions 16] [--seed 0]
"""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import UserError, parse_args, run_main
from tools import fault_server, synthetic

# MT-Bench's categories in the order of FastChat's question.jsonl (10 questions each there, ids 81-160),
# and the ones its judge grades against a reference answer (FastChat's NEED_REF_CATS, less arena-hard-200).
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
FIRST_ID = 81  # FastChat's first question_id

# Our own wording. The placeholders are FastChat's: {question} {answer} {ref_answer_1} for one turn,
# {question_1} {answer_1} {question_2} {answer_2} {ref_answer_1} {ref_answer_2} for two.
_SYSTEM = ("You grade the replies of an AI assistant fairly and strictly. Explain your grade in a few "
           "sentences, then give it as an integer from 1 to 10 in double square brackets, like [[4]].")
_RATE = "Grade the assistant's reply from 1 to 10, written as [[grade]]."
JUDGE_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": _SYSTEM, "category": "general",
     "description": "one turn, no reference", "output_format": "[[rating]]",
     "prompt_template": "Judge how helpful, correct and clear the reply is.\n\n## Question\n{question}\n\n"
                        "## Reply\n{answer}\n\n" + _RATE},
    {"name": "single-math-v1", "type": "single", "system_prompt": _SYSTEM, "category": "math",
     "description": "one turn, graded against a reference", "output_format": "[[rating]]",
     "prompt_template": "The reply must reach the reference's result; a wrong result gets a low grade.\n\n"
                        "## Question\n{question}\n\n## Reference\n{ref_answer_1}\n\n## Reply\n{answer}\n\n" + _RATE},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": _SYSTEM, "category": "general",
     "description": "second turn, no reference", "output_format": "[[rating]]",
     "prompt_template": "Grade only the reply to this follow-up question: {question_2}\n\n## The conversation\n"
                        "User: {question_1}\nAssistant: {answer_1}\nUser: {question_2}\nAssistant: {answer_2}\n\n"
                        + _RATE},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": _SYSTEM, "category": "math",
     "description": "second turn, graded against a reference", "output_format": "[[rating]]",
     "prompt_template": "Grade only the reply to this follow-up question: {question_2}\nIt must reach the "
                        "reference's second result.\n\n## References\nfirst: {ref_answer_1}\nsecond: {ref_answer_2}"
                        "\n\n## The conversation\nUser: {question_1}\nAssistant: {answer_1}\nUser: {question_2}\n"
                        "Assistant: {answer_2}\n\n" + _RATE},
]


def planned_score(case: int) -> int:
    """The default rating of judge case `case` (1-10, every value taken within 10 consecutive cases)."""
    return (3 * case) % 10 + 1


# ---------------------------------------------------------------------------------------------
# One question per category: (turn 1, turn 2, short references, reference sentences)

def _question(category: str, rng: random.Random, lex: synthetic.Lexicon):
    name, other, third = rng.sample(lex.names, 3)
    thing, adj = rng.choice(lex.nouns), rng.choice(lex.adjectives)
    if category == "writing":
        return (f"Write a short postcard from the town of {name}, famous for its {adj} {thing}.",
                "Now rewrite the postcard as a poem of four lines.")
    if category == "roleplay":
        return (f"Play {name}, the keeper of a {adj} {thing}. Greet a visitor in two sentences.",
                f"The visitor asks how old the {thing} is. Answer in character.")
    if category == "reasoning":
        return (f"{name} is older than {other}, and {other} is older than {third}. Who is the youngest?",
                "Who is the oldest of the three?", [third, name],
                [f"{third} is the youngest.", f"{name} is the oldest."])
    if category == "math":
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
        return (f"What is {a} + {b}?", f"Multiply that result by {c}.", [str(a + b), str((a + b) * c)],
                [f"{a} + {b} = {a + b}.", f"({a} + {b}) x {c} = {(a + b) * c}."])
    if category == "coding":
        k = rng.randint(2, 9)
        return (f"Write a Python function that returns how many numbers in a list are greater than {k}.",
                "Change it so that it returns those numbers instead of how many there are.",
                [f"sum(x > {k} for x in xs)", f"[x for x in xs if x > {k}]"],
                [f"def count_greater(xs):\n    return sum(1 for x in xs if x > {k})",
                 f"def greater(xs):\n    return [x for x in xs if x > {k}]"])
    if category == "extraction":
        code = rng.randint(1000, 9999)
        return (f"Extract the name and the number from this line as JSON: {synthetic.fact_sentence(name, str(code))}",
                "Now return the number only.")
    if category == "stem":
        return (rng.choice(["Explain in two sentences why ice floats on water.",
                            "Explain in two sentences what makes the sky look blue.",
                            "Explain in two sentences why a metal spoon feels colder than a wooden one."]),
                "Explain it again for a ten-year-old.")
    return (rng.choice(["Name two causes of the growth of medieval towns.",
                        "What did the printing press change for ordinary readers?",
                        "Why do historians compare several sources about the same event?"]),
            "Summarize your answer in one sentence.")


def make_questions(num_questions: int, seed: int = 0,
                   plan: dict[int, tuple[int | None, tuple[str, ...]]] | None = None) -> tuple[list, list]:
    """(questions, references) in FastChat's schema. plan: judge case -> (score or None = never rated, faults);
    cases not in it are rated planned_score(case) without faults."""
    rng, lex = random.Random(seed), synthetic.Lexicon(seed)
    questions, references = [], []
    for i in range(num_questions):
        category, qid = CATEGORIES[i % len(CATEGORIES)], FIRST_ID + i
        q1, q2, *refs = _question(category, rng, lex)
        turns = []
        for turn, text in enumerate((q1, q2), 1):
            case = 2 * i + turn
            score, faults = (plan or {}).get(case, (planned_score(case), ()))
            turns.append(f"{text} {fault_server.marker(case, score, faults)}")
        row = {"question_id": qid, "category": category, "turns": turns}
        if category in REFERENCE_CATEGORIES:
            short, sentences = refs
            row["reference"] = short
            references.append({"question_id": qid, "answer_id": f"synthetic-{qid}", "model_id": "synthetic-reference",
                               "choices": [{"index": 0, "turns": sentences}], "tstamp": 0.0})
        questions.append(row)
    return questions, references


def write_mt_bench(out: Path, num_questions: int = 16, seed: int = 0, plan=None) -> Path:
    """The three files under `out` (question.jsonl, judge_prompts.jsonl, reference_answer/gpt-4.jsonl)."""
    questions, references = make_questions(num_questions, seed, plan)
    (out / "reference_answer").mkdir(parents=True, exist_ok=True)
    for path, rows in ((out / "question.jsonl", questions), (out / "judge_prompts.jsonl", JUDGE_PROMPTS),
                       (out / "reference_answer" / "gpt-4.jsonl", references)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "folder for question.jsonl, judge_prompts.jsonl, reference_answer/gpt-4.jsonl"})
    num_questions: int = field(default=16, metadata={"help": "number of two-turn questions (8 or more hold every category)"})
    seed: int = field(default=0, metadata={"help": "seed of the question texts"})

    def __post_init__(self):
        if self.num_questions < 1:
            raise UserError("--num_questions must be >= 1")


def main(argv=None):
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)
    out = write_mt_bench(Path(args.output_dir), args.num_questions, args.seed)
    print(f"synthetic_mt_bench: {args.num_questions} two-turn questions ({min(args.num_questions, 8)} categories), "
          f"judge cases 1-{2 * args.num_questions} rated (3 x case) mod 10 + 1 by tools.fault_server -> {out}")


if __name__ == "__main__":
    main()
