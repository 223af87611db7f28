"""An offline judge with a transparent rubric — NOT GPT-4: token F1 between the answer and the reference
answer over the words that answer the question, mapped to the 1-10 scale.

LongBench-Chat and the Needle test are judged by GPT-4 in the paper; an offline machine has no GPT-4. The
quickstart still needs a score that says something about the answer, so this judge computes one a reader
can check by hand:

    normalise the texts (lower case, punctuation and the articles a/an/the removed, as SQuAD and
    LongBench's qa_f1 do) and split them into words;
    drop from the reference and from the answer every word the question contains: what is left of the
    reference is the information it adds ("Maya Cohen", "Nairobi"), so restating the question earns nothing;
    count the words left in both (with multiplicity): precision = shared / answer words left,
    recall = shared / reference words left, F1 = 2PR / (P + R);
    rating = 1 + 9 x F1, one decimal  (the reference's information and nothing else: 10; none of it: 1)

(Plain token F1 over all words, tried first, gave 8.4 / 10 to an answer with one of its two facts wrong,
because the words shared with the question dominate.) It reads the question, the reference and the answer
out of the judge prompt the scripts send — the sections "Question:", "Reference answer:" and "Answer to
grade:" (tools/synthetic_eval.py's prompt_fs.txt) or "Assistant's answer:" (Needle_test/eval.py's
rubric) — and replies with its arithmetic and the rating as [[x]], so it is served through the same
client, retries and files as a real judge (tools/fault_server.py answers every judge request that
carries no fault marker this way). A prompt without those sections gets a reply without a rating, which
the client counts as a failed judgement (never a made-up score). Word overlap is not understanding: a
correct paraphrase scores lower than a copy, and words the answer adds beyond the reference lower it.

Run as (the quickstart does this):
    python -m tools.rubric_judge --port 8766 &
    OPENAI_API_KEY=local python LongBench_Chat/eval.py ... --judge_base_url http://127.0.0.1:8766/v1 --judge_model rubric-f1
"""

import re
import string
from collections import Counter
from dataclasses import dataclass, field

from longalign.scriptargs import parse_args, run_main

_QUESTION = re.compile(r"Question:[ \t]*\n?(.*?)\n(?:\s*\n|Reference answer:)", re.S)
_REFERENCE = re.compile(r"Reference answer:[ \t]*\n?(.*?)\n(?:\s*\n|Assistant's answer:)", re.S)
_ANSWER = re.compile(r"(?:Answer to grade|Assistant's answer):[ \t]*\n?(.*)\Z", re.S)


def normalize(text: str) -> list[str]:
    """SQuAD's answer normalisation, as words."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(answer: str, reference: str, question: str = "") -> dict:
    """precision, recall, f1 and the shared word count of answer vs reference, both less the question's words
    (if that leaves the reference nothing, all its words count)."""
    asked = set(normalize(question))
    if not set(normalize(reference)) - asked:
        asked = set()
    r = [w for w in normalize(reference) if w not in asked]
    a = [w for w in normalize(answer) if w not in asked]
    shared = sum((Counter(a) & Counter(r)).values())
    p = shared / len(a) if a else 0.0
    rec = shared / len(r) if r else 0.0
    return {"shared": shared, "answer_words": len(a), "reference_words": len(r), "precision": p, "recall": rec,
            "f1": 2 * p * rec / (p + rec) if shared else 0.0, "reference_left": r}


def rating(answer: str, reference: str, question: str = "") -> float:
    return round(1 + 9 * token_f1(answer, reference, question)["f1"], 1)


def parse_prompt(prompt: str) -> tuple[str, str, str] | None:
    """(question, reference, answer) from a judge prompt, or None if it has not all three sections."""
    found = [m.search(prompt) for m in (_QUESTION, _REFERENCE, _ANSWER)]
    if not all(found):
        return None
    return tuple(m.group(1).strip() for m in found)


def reply(prompt: str) -> str:
    """The judge's reply: its arithmetic, then the rating as [[x]]; no rating if the prompt has no sections."""
    parsed = parse_prompt(prompt)
    if parsed is None:
        return ("Rubric judge (token F1, not GPT-4): this prompt lacks a 'Question:', 'Reference answer:' or "
                "'Answer to grade:' section, so there is nothing to compare and no rating.")
    question, reference, answer = parsed
    f = token_f1(answer, reference, question)
    return (f"Rubric judge (token F1 against the reference, question words left out; not GPT-4): reference "
            f"words that answer the question {' '.join(f['reference_left'])!r}; {f['shared']} shared, precision "
            f"{f['shared']}/{f['answer_words']} = {f['precision']:.2f}, recall {f['shared']}/{f['reference_words']} "
            f"= {f['recall']:.2f}, F1 {f['f1']:.3f}; rating 1 + 9 x F1 = [[{rating(answer, reference, question)}]]")


@dataclass
class Args:
    port: int = field(default=8766, metadata={"help": "port on 127.0.0.1"})


def main(argv=None):
    from tools.fault_server import serve

    (args,) = run_main(lambda a: parse_args((Args,), a), argv)
    serve(args.port, "rubric judge (token F1 against the reference answer, NOT GPT-4)")


if __name__ == "__main__":
    main()
