"""Offline LongBench-Chat-shaped cases, made by the project (no published case is copied).

The published benchmark ships three files; this writes files of the same schema:

    test_cases.json  [{"idx": 1, "prompt": <document + question>, "query": <question>,
                       "answer": <reference answer>}, ...]            (idx from 1)
    few_shots.json   [[{"answer": str, "score": int} x 3], ...]        (entry idx-1 belongs to case idx)
    prompt_fs.txt    the judge prompt with 9 positional {} fields: question, reference answer,
                     (answer, score) x 3, the answer to grade

Each case hides a fact in a synthetic document (the quickstart's fact shape); one case in four asks
in Chinese so per-language means have something to average. `markers` adds a fault-server marker
(tools.fault_server) to chosen questions, so a test knows each case's judge score in advance.

Run as:
    python -m tools.synthetic_eval --output_dir runs/lbc_data --num_cases 8 [--min_words 300]
"""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import parse_args, run_main
from tools import fault_server, synthetic

# Our own judge instructions (the published prompt_fs.txt is the user's to supply for real runs).
JUDGE_PROMPT = """You grade an AI assistant's answer to a question about a long document.
Compare the answer with the reference answer. Correctness counts most, then whether it answers the
question directly and completely; wrong or irrelevant additions lose points.
Write one or two sentences of justification, then an integer rating from 1 to 10 in double square
brackets, for example [[6]].

Question:
{}

Reference answer:
{}

Answers graded earlier, as a scale:

Answer:
{}
Rating: [[{}]]

Answer:
{}
Rating: [[{}]]

Answer:
{}
Rating: [[{}]]

Answer to grade:
{}
"""


def make_cases(num_cases: int, min_words: int = 300, seed: int = 0,
               markers: dict[int, tuple[int | None, tuple[str, ...]]] | None = None) -> tuple[list, list]:
    """(test_cases, few_shots) in the published schema. markers: idx -> (score, faults)."""
    rng, lex = random.Random(seed), synthetic.Lexicon(seed)
    cases, shots = [], []
    for idx in range(1, num_cases + 1):
        name, code = rng.choice(lex.names), str(rng.randint(1000, 9999))
        wrong = str((int(code) + rng.randint(1, 8999)) % 9000 + 1000)
        sentences = lex.paragraph(rng, rng.randint(min_words, 2 * min_words)).split(". ")
        sentences.insert(rng.randint(0, len(sentences)), synthetic.fact_sentence(name, code)[:-1])
        document = ". ".join(sentences).rstrip(".") + "."
        query = f"{name}的秘密代码是什么？" if idx % 4 == 0 else synthetic.fact_question(name)
        if markers and idx in markers:
            query += " " + fault_server.marker(idx, *markers[idx])
        cases.append({"idx": idx, "prompt": f"{document}\n\nRead the document above and answer. {query}",
                      "query": query, "answer": synthetic.fact_sentence(name, code)})
        shots.append([{"answer": synthetic.fact_sentence(name, code), "score": 10},
                      {"answer": f"The document says the code is {code}, but it belongs to someone else.", "score": 5},
                      {"answer": synthetic.fact_sentence(name, wrong), "score": 2}])
    return cases, shots


def write_cases(out: Path, num_cases: int, min_words: int = 300, seed: int = 0, markers=None) -> Path:
    return write_files(out, *make_cases(num_cases, min_words, seed, markers))


def write_files(out: Path, cases: list, shots: list) -> Path:
    """The three files of the published schema (cases and few-shots from here or tools.demo_data)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "test_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "few_shots.json").write_text(json.dumps(shots, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "prompt_fs.txt").write_text(JUDGE_PROMPT, encoding="utf-8")
    return out


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "folder for the three files (alias --out)"})
    num_cases: int = field(default=8, metadata={"help": "number of cases"})
    min_words: int = field(default=300, metadata={"help": "shortest document in words (longest 2x)"})
    seed: int = field(default=0, metadata={"help": "seed of the documents and facts"})
    fault_markers: bool = field(default=False, metadata={
        "help": "add fault-server markers: scores 1-10 cycling, faults on cases 1-3, case 2 always fails"})


def main(argv=None):
    (args,) = run_main(lambda a: parse_args((Args,), a, aliases={"--out": "--output_dir"}), argv)
    out = Path(args.output_dir)
    markers = None
    if args.fault_markers:
        # Case 1 sees 429, 500, 500; case 2 never gets a rating; case 3 one slow reply and one garbage.
        markers = {i: ((i * 3) % 10 + 1, ()) for i in range(1, args.num_cases + 1)}
        markers[1] = (markers[1][0], ("429", "500", "500"))
        markers[2] = (None, ())
        markers[3] = (markers[3][0], ("slow", "garbage"))
    write_cases(out, args.num_cases, args.min_words, args.seed, markers)
    print(f"synthetic_eval: {args.num_cases} LongBench-Chat-shaped cases -> {out}")


if __name__ == "__main__":
    main()
