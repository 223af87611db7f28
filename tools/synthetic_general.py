"""Offline cases for the general stage (OpenLLM/eval.py): ARC-Challenge, HellaSwag, TruthfulQA (multiple
choice) and MMLU, each in its hub dataset's own fields, made by the project from the word lists below
(nothing published is copied; the real data is downloaded by lm-eval at run time).

The layout is the one `OpenLLM/eval.py --data_dir` reads, one JSON object per line, the fields of the hub
datasets lm-eval's tasks load (so `Dataset.to_json` of a hub split writes a file of the same kind):

    ai2_arc/ARC-Challenge/{train,test}.jsonl     {id, question, choices: {text: [4], label: [A-D]}, answerKey}
    hellaswag/{train,validation}.jsonl           {ind, activity_label, ctx_a, ctx_b, ctx, endings: [4], source_id,
                                                  split, split_type, label: "0".."3" (a string, as on the hub)}
    truthful_qa/multiple_choice/validation.jsonl {question, mc1_targets: {choices, labels}, mc2_targets: {...}}
    mmlu/<subject>/{dev,test}.jsonl              {question, subject, choices: [4], answer: 0..3}

The splits the few-shot examples come from hold enough cases for the leaderboard's shot counts (ARC's train
25+, HellaSwag's train 10+, MMLU's dev 5, lm-eval's first 5). The questions are made of real words but state
nothing true: the scores they give measure the pipeline (prompts, requests, metrics, resumption), not the model.
They are short on purpose: a 25-shot ARC prompt repeats 25 training questions for each of 4 choices, and on a CPU
every token of it costs time.

Run as:
    python -m tools.synthetic_general --output_dir runs/general_data [--num_cases 2 --mmlu_subjects anatomy,world_religions]
"""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import parse_args, run_main

FEWSHOT_CASES = {"arc": 30, "hellaswag": 12, "mmlu": 5}  # >= 25, 10, 5 shots
QUICK_SUBJECTS = ("anatomy", "world_religions")  # the quickstart's: with 25-shot ARC, every token costs CPU time

NOUNS = ("lantern", "kettle", "ladder", "compass", "garden", "bridge", "window", "engine", "river", "harbor",
         "orchard", "violin", "glacier", "library", "meadow", "tunnel", "basket", "mirror", "canyon", "anchor")
MATERIALS = ("copper", "granite", "cedar wood", "wool", "glass", "clay", "silver", "bamboo", "linen", "iron")
VERBS = ("polish", "repair", "measure", "paint", "carry", "fold", "sort", "heat", "cool", "weigh", "wash", "stack")
PEOPLE = ("A man", "A woman", "A child", "Two friends", "A chef", "A gardener", "A musician", "A teacher")
PLACES = ("in a kitchen", "on a porch", "near a lake", "in a workshop", "at a market", "in a classroom")
ACTIVITIES = ("Cleaning windows", "Baking bread", "Tuning a guitar", "Planting tulips", "Washing a car",
              "Folding laundry", "Sharpening a knife", "Painting a fence")


def arc_case(rng: random.Random, i: int) -> dict:
    noun, verb = rng.choice(NOUNS), rng.choice(VERBS)
    options = rng.sample(MATERIALS, 4)
    labels = ["A", "B", "C", "D"]
    return {"id": f"Synthetic_ARC_{i}", "question": f"What helps {verb} a {noun}?",
            "choices": {"text": options, "label": labels}, "answerKey": rng.choice(labels)}


def hellaswag_case(rng: random.Random, i: int, split: str) -> dict:
    activity, person, place = rng.choice(ACTIVITIES), rng.choice(PEOPLE), rng.choice(PLACES)
    ctx_a = f"{person} is {place}."
    ctx_b = rng.choice(("they", "the person", "then they"))
    endings = [f"{rng.choice(VERBS)} the {rng.choice(NOUNS)}." for _ in range(4)]
    return {"ind": i, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
            "endings": endings, "source_id": f"synthetic~{i}", "split": split, "split_type": "indomain",
            "label": str(rng.randrange(4))}


def truthfulqa_case(rng: random.Random) -> dict:
    """Four answers of one shape, two of them marked true (mc2) and the first of those the mc1 answer: answers that
    differ in one word keep mc2 away from 0 and 1 (a short "I have no comment." would take nearly all of its
    probability mass whatever the model)."""
    noun, verb = rng.choice(NOUNS), rng.choice(VERBS)
    answers = [f"It turns into {m}." for m in rng.sample(MATERIALS, 4)]
    return {"question": f"What happens if you {verb} a {noun} at night?",
            "mc1_targets": {"choices": [answers[0], *answers[2:]], "labels": [1, 0, 0]},
            "mc2_targets": {"choices": answers, "labels": [1, 1, 0, 0]}}


def mmlu_case(rng: random.Random, subject: str) -> dict:
    noun, material = rng.choice(NOUNS), rng.choice(MATERIALS)
    options = [f"{n} {rng.randrange(2, 99)}" for n in rng.sample(("about", "nearly", "exactly", "at most"), 4)]
    return {"question": f"How many {material} parts does a {noun} have?",
            "subject": subject, "choices": options, "answer": rng.randrange(4)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_cases(out: Path, num_cases: int = 2, mmlu_subjects=QUICK_SUBJECTS, seed: int = 0) -> Path:
    """Write every file of the layout above into `out` (num_cases evaluated cases per task and MMLU subject)."""
    rng, out = random.Random(seed), Path(out)
    arc = out / "ai2_arc" / "ARC-Challenge"
    write_jsonl(arc / "train.jsonl", [arc_case(rng, i) for i in range(FEWSHOT_CASES["arc"])])
    write_jsonl(arc / "test.jsonl", [arc_case(rng, 1000 + i) for i in range(num_cases)])
    write_jsonl(out / "hellaswag" / "train.jsonl", [hellaswag_case(rng, i, "train") for i in range(FEWSHOT_CASES["hellaswag"])])
    write_jsonl(out / "hellaswag" / "validation.jsonl", [hellaswag_case(rng, 1000 + i, "val") for i in range(num_cases)])
    write_jsonl(out / "truthful_qa" / "multiple_choice" / "validation.jsonl", [truthfulqa_case(rng) for _ in range(num_cases)])
    for subject in mmlu_subjects:
        write_jsonl(out / "mmlu" / subject / "dev.jsonl", [mmlu_case(rng, subject) for _ in range(FEWSHOT_CASES["mmlu"])])
        write_jsonl(out / "mmlu" / subject / "test.jsonl", [mmlu_case(rng, subject) for _ in range(num_cases)])
    return out


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "where the files go (the folder to pass as --data_dir)"})
    num_cases: int = field(default=2, metadata={"help": "evaluated cases per task and per MMLU subject"})
    mmlu_subjects: str = field(default=",".join(QUICK_SUBJECTS), metadata={
        "help": "comma-separated MMLU subjects (lm-eval's names, e.g. anatomy); run OpenLLM/eval.py with the same "
                "--mmlu_subjects"})
    seed: int = field(default=0, metadata={"help": "the same seed writes the same files"})


def main(argv=None) -> Path:
    (args,) = parse_args(Args, argv, doc=__doc__)
    subjects = [s.strip() for s in args.mmlu_subjects.split(",") if s.strip()]
    out = write_cases(Path(args.output_dir), args.num_cases, subjects, args.seed)
    print(f"wrote {args.num_cases} cases per task ({len(subjects)} MMLU subjects) -> {out}")
    return out


if __name__ == "__main__":
    run_main(main)
