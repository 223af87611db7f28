"""The data of the paper's findings in miniature (scripts/reproduce.py --preset miniature): long-context chats
with SHORT answers and short-context chats with LONG answers, made at run time from the standard library's
docstrings like the quickstart's (tools/demo_data.py; nothing here is copied into the repository).

Why this mix. Packing without loss weighting averages a pack's loss over its target tokens (paper Eq. 3), so a
sequence counts in proportion to its number of target tokens. In the paper's data the long-context samples
(LongAlign-10k) have few target tokens per sample and ShareGPT's short chats many, so packing alone gives the long
samples less weight than naive or sorted batching does (each sequence's mean counted once, Eq. 2); loss weighting
(Eq. 4) restores it (paper section 3.2). This mix is that condition, made sharp:

    long   raw/long.jsonl    a document of long_min_words..8x words with 3-10 look-alike facts; the question asks
                             for one (or two) of them; the answer is one or two sentences (~15-30 tokens)
                             (tools/demo_data.train_conversation)
    short  raw/short.jsonl   a paragraph or two (40-100 words) with 3-6 facts of one shape about different
                             subjects; the question asks for every sentence of that shape, in order; the answer
                             lists them (~40-90 tokens): few context tokens, many target tokens

The evaluation's stand-ins, on documents and fact shapes never trained on (demo_data's held-out modules and
families):

    lbc/         LongBench-Chat-shaped cases: long documents, two facts asked (demo_data.lbc_cases), the long task
    short_chat/  the same schema, short documents, every fact of one shape asked: the short chat task, where
                 training on the short samples shows (the miniature's stand-in for MT-Bench, whose offline
                 stand-in rates by plan and so cannot see training)
    haystack/    the Needle test's haystack (demo_data.write_haystack)

Run as:
    python -m tools.miniature_data --output_dir runs/miniature/data [--num_long 16 --num_short 16]
"""

import random
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import parse_args, run_main
from tools import demo_data, synthetic_eval
from tools.demo_data import FAMILIES, INSTRUCTION, document, draw_facts, statement


def list_question(family: str) -> str:
    """Ask for every fact of one shape, the shape shown with placeholders (no subject or value of the text)."""
    shape = FAMILIES[family][0].format(s="X", v="Y")
    return f'List, in the order they appear, every sentence of the text of the form "{shape}"'


def list_chat(rng: random.Random, paragraphs: list[str], families, num_words: int) -> tuple[str, str, str]:
    """(prompt, question, answer): a short document with 3-6 facts of one family and 0-2 of another (so the
    shape matters); the answer is the family's facts in document order, one sentence each."""
    family, other = rng.sample(list(families), 2)
    facts = [statement(family, s, v) for s, v in draw_facts(rng, family, rng.randint(3, 6))]
    noise = [statement(other, s, v) for s, v in draw_facts(rng, other, rng.randint(0, 2))]
    sentences = facts + noise
    rng.shuffle(sentences)
    text = document(rng, paragraphs, num_words, sentences)
    ordered = sorted(facts, key=text.index)
    query = list_question(family)
    return f"{text}\n\n{INSTRUCTION} {query}", query, " ".join(ordered)


def short_chat_cases(num_cases: int, seed: int = 0) -> tuple[list, list]:
    """(test_cases, few_shots) in the LongBench-Chat schema for the held-out short chat task. Few-shot scale:
    every fact (10), the first half of them (5), a wrong shape (2)."""
    rng, paragraphs = random.Random(seed), demo_data.held_out_paragraphs()
    cases, shots = [], []
    for idx in range(1, num_cases + 1):
        prompt, query, answer = list_chat(rng, paragraphs, demo_data.LBC_FAMILIES, rng.randint(40, 100))
        facts = answer.split(". ")
        cases.append({"idx": idx, "prompt": prompt, "query": query, "answer": answer})
        shots.append([{"answer": answer, "score": 10},
                      {"answer": ". ".join(facts[: len(facts) // 2]).rstrip(".") + ".", "score": 5},
                      {"answer": "The text does not say.", "score": 2}])
    return cases, shots


def write(out: Path, num_long: int, num_short: int, long_min_words: int, num_eval: int, lbc_min_words: int,
          seed: int = 0) -> dict:
    """Every file of the layout above; returns counts for the summary line."""
    rng, paragraphs = random.Random(seed), demo_data.stdlib_paragraphs(demo_data.TRAIN_MODULES)
    lengths = [int(long_min_words * 8 ** (rng.random() ** 2)) for _ in range(num_long)]
    demo_data.write_jsonl(out / "raw" / "long.jsonl",
                          (demo_data.train_conversation(rng, paragraphs, n) for n in lengths))
    short = (list_chat(rng, paragraphs, demo_data.TRAIN_FAMILIES, rng.randint(40, 100)) for _ in range(num_short))
    demo_data.write_jsonl(out / "raw" / "short.jsonl",
                          ({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
                           for prompt, _, answer in short))
    demo_data.write_haystack(out / "haystack")
    synthetic_eval.write_files(out / "lbc", *demo_data.lbc_cases(num_eval, lbc_min_words, seed))
    synthetic_eval.write_files(out / "short_chat", *short_chat_cases(num_eval, seed))
    return {"long_words": (min(lengths, default=0), max(lengths, default=0))}


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "output folder (alias --out)"})
    num_long: int = field(default=16, metadata={"help": "long-context chats with short answers"})
    num_short: int = field(default=16, metadata={"help": "short-context chats with long answers"})
    long_min_words: int = field(default=60, metadata={"help": "shortest long document; the longest is 8x"})
    num_eval: int = field(default=8, metadata={"help": "cases of each held-out chat task (lbc/, short_chat/)"})
    lbc_min_words: int = field(default=250, metadata={"help": "shortest LongBench-Chat-shaped document (longest 2x)"})
    seed: int = field(default=0, metadata={"help": "seed of the documents and facts"})


def main(argv=None) -> None:
    (args,) = run_main(lambda a: parse_args((Args,), a, aliases={"--out": "--output_dir"}), argv)
    out = Path(args.output_dir)
    counts = write(out, args.num_long, args.num_short, args.long_min_words, args.num_eval, args.lbc_min_words, args.seed)
    lo, hi = counts["long_words"]
    print(f"miniature_data: {args.num_long} long chats ({lo}-{hi} words, short answers), {args.num_short} short chats "
          f"(long answers), {args.num_eval} + {args.num_eval} held-out cases, a haystack -> {out}")


if __name__ == "__main__":
    main()
