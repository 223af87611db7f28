"""The quickstart's data for a real model: real English from the Python standard library, with facts that
do not stand out from it, generated at run time (nothing here is copied into the repository).

A pretrained model reads real English, so the documents are prose paragraphs of the standard library's
own docstrings (read with `inspect.getdoc` from the running Python; code examples and argument lists are
left out). Into them go facts of one shape — "The ledger server listens on port 4127." — several of the
same shape about different subjects, so that a question about one of them can only be answered by
finding the right sentence among look-alikes; a small model that merely spots "the sentence that looks
like a fact" answers with the wrong one. The answer restates the fact, so it needs the context.

Three disjoint parts keep the evaluation honest:

    train   TRAIN_MODULES' docstrings, facts of the TRAIN_FAMILIES       -> raw/long.jsonl, raw/sharegpt.jsonl
    needle  EVAL_MODULES' docstrings + look-alikes of the NEEDLE family    -> haystack/*.txt (Needle_test)
    lbc     EVAL_MODULES' docstrings, two facts of the LBC_FAMILIES asked  -> lbc/ (LongBench-Chat schema)
            together, with look-alikes; reference answer = both facts

so the trained model is scored on documents, fact shapes and questions it never saw in training.

Run as:
    python -m tools.demo_data --output_dir runs/quickstart/data [--num_long 160 --long_min_words 150 --num_short 60]

Writes:
    <out>/raw/long.jsonl      long chats: a document (min_words..8x words), a question about one fact, its answer
                              (one in four has a second round; one in four asks about two facts at once)
    <out>/raw/sharegpt.jsonl  short chats of the same kind (1-3 paragraphs), the ShareGPT stand-in
    <out>/haystack/*.txt      the Needle test's haystack: EVAL_MODULES prose with NEEDLE-family look-alikes
    <out>/lbc/                test_cases.json, few_shots.json, prompt_fs.txt (tools/synthetic_eval.py schema)
"""

import contextlib
import importlib
import inspect
import io
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import parse_args, run_main

# ---------------------------------------------------------------------------------------------
# 1. Prose from the standard library's docstrings. Modules present in Python 3.11-3.13; the two
# lists share no module, so no training document repeats a sentence of the evaluation's documents.

TRAIN_MODULES = (
    "argparse", "collections", "textwrap", "subprocess", "urllib.request", "zipfile", "tarfile", "shutil",
    "tempfile", "pathlib", "calendar", "statistics", "random", "itertools", "configparser", "typing",
    "imaplib", "ftplib", "socket", "selectors", "queue", "sched", "locale", "optparse", "getopt", "weakref",
    "shelve", "gzip", "bz2", "lzma", "uuid", "mailbox", "mimetypes", "base64", "xml.dom.minidom",
    "xml.etree.ElementTree", "cmd", "os", "io", "re", "abc", "fileinput", "xmlrpc.client", "http.server",
    "urllib.parse", "socketserver", "timeit", "traceback", "code", "pkgutil", "ast", "tokenize", "graphlib",
    "platform", "email.utils", "py_compile", "sysconfig",
)
EVAL_MODULES = (
    "logging", "threading", "doctest", "pdb", "inspect", "ssl", "email.message", "smtplib", "http.cookiejar",
    "difflib", "codecs", "http.client",
)


def _doc(obj) -> str:
    """The object's own docstring, cleaned (not inspect.getdoc: that inherits a base class's text, which
    would put the same paragraph in both module lists)."""
    return inspect.cleandoc(obj.__doc__) if isinstance(getattr(obj, "__doc__", None), str) else ""


def _docstrings(module) -> list[str]:
    docs = [_doc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            docs.append(_doc(obj))
        if inspect.isclass(obj):
            docs += [_doc(f) for n, f in sorted(vars(obj).items()) if not n.startswith("_") and inspect.isfunction(f)]
    return docs


def is_prose(paragraph: str) -> bool:
    """A paragraph of sentences: no indented or code lines, no heading, few code characters."""
    lines = paragraph.splitlines()
    if not lines or any(x.startswith((" ", "\t", ">>>", "..")) or x.rstrip().endswith(":") for x in lines):
        return False
    text = " ".join(x.strip() for x in lines)
    code_chars = sum(c in "()[]{}=_<>*`|\\" for c in text)
    return len(text.split()) >= 8 and text[0].isupper() and text.endswith(".") and code_chars <= len(text) / 40


def stdlib_paragraphs(modules, exclude: frozenset = frozenset()) -> list[str]:
    """Prose paragraphs (one line each) of the modules' docstrings, in a fixed order, none of `exclude`.
    A module this Python lacks is skipped, and its import-time deprecation warnings are silenced."""
    out, seen = [], set(exclude)
    for name in modules:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # deprecated modules warn on import, typing.io on attribute access
            try:
                docs = _docstrings(importlib.import_module(name))
            except ImportError:
                continue
        for doc in docs:
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(x.strip() for x in para.splitlines())
                if is_prose(para) and text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def held_out_paragraphs() -> list[str]:
    """EVAL_MODULES' paragraphs less any that a training module also has (a docstring copied between
    modules, e.g. a method documented the same way in two classes)."""
    return stdlib_paragraphs(EVAL_MODULES, exclude=frozenset(stdlib_paragraphs(TRAIN_MODULES)))


# ---------------------------------------------------------------------------------------------
# 2. Facts: a family is a statement and the question it answers, about a subject, with a value.

SUBJECTS = ("mirror", "archive", "backup", "upload", "search", "mail", "proxy", "cache", "index", "export",
            "render", "deploy", "audit", "billing", "report", "sync", "print", "scan", "login", "session",
            "ledger", "invoice", "sensor", "camera", "weather", "garden", "library", "harbor", "ticket",
            "route", "signal", "market", "forest", "river", "bridge", "lantern", "compass", "anchor",
            "journal", "planner")
VALUES = {
    "seconds": [str(n) for n in range(11, 99)],
    "port": [str(n) for n in range(1031, 9973, 37)],
    "person": ["Alice Moreau", "Bram Visser", "Chen Wei", "Dara Okafor", "Elena Petrova", "Farid Haddad",
               "Greta Lindqvist", "Hiro Tanaka", "Ines Duarte", "Jonas Berg", "Kavya Rao", "Luca Romano",
               "Maya Cohen", "Nils Eriksen", "Olga Novak", "Pablo Ruiz", "Quinn Walsh", "Rosa Almeida"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"],
    "colour": ["red", "orange", "yellow", "green", "blue", "purple", "grey", "brown", "pink", "teal"],
    "city": ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Dublin", "Tallinn", "Porto", "Quebec", "Perth",
             "Krakow", "Seville", "Hanoi", "Bergen"],
    "folder": ["spool", "journal", "outbox", "vault", "staging", "attic", "cellar", "drawer", "shelf", "depot"],
}
# name: (statement, question, value kind). {s} is the subject, {v} the value.
FAMILIES = {
    "timeout": ("If no timeout is given, the {s} client waits {v} seconds before it gives up.",
                "How many seconds does the {s} client wait before it gives up if no timeout is given?", "seconds"),
    "port": ("The {s} server listens on port {v}.", "On which port does the {s} server listen?", "port"),
    "author": ("The {s} parser was written by {v}.", "Who wrote the {s} parser?", "person"),
    "weekday": ("The {s} summary is rebuilt every {v}.", "On which day of the week is the {s} summary rebuilt?",
                "weekday"),
    "queue": ("By default the {s} queue holds at most {v} items.",
              "How many items does the {s} queue hold at most by default?", "seconds"),
    "folder": ("The {s} worker writes its log files to the {v} directory.",
               "To which directory does the {s} worker write its log files?", "folder"),
    "signer": ("Messages from the {s} service are signed with the key of {v}.",
               "Whose key signs the messages from the {s} service?", "person"),
    "colour": ("Warnings from the {s} handler are printed in {v}.",
               "In which colour are warnings from the {s} handler printed?", "colour"),
    "release": ("The {s} module was first released in {v}.", "In which month was the {s} module first released?",
                "month"),
    "cache": ("The {s} cache is cleared every {v} minutes.", "Every how many minutes is the {s} cache cleared?",
              "seconds"),
    "city": ("Copies of the {s} archive are kept in {v}.", "Where are copies of the {s} archive kept?", "city"),
    "retries": ("A failed {s} request is retried {v} times before an error is raised.",
                "How many times is a failed {s} request retried before an error is raised?", "seconds"),
    "owner": ("Questions about the {s} package should be sent to {v}.",
              "To whom should questions about the {s} package be sent?", "person"),
}
NEEDLE_FAMILY = "timeout"
LBC_FAMILIES = ("retries", "owner", "city")
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f != NEEDLE_FAMILY and f not in LBC_FAMILIES)

# The needle of the quickstart's Needle test (Needle_test/config-quickstart-prompt.yaml holds the same text).
NEEDLE_SUBJECT, NEEDLE_VALUE = "mirror", "45"
INSTRUCTION = "Read the document above and answer."


def statement(family: str, subject: str, value: str) -> str:
    return FAMILIES[family][0].format(s=subject, v=value)


def question(family: str, subject: str) -> str:
    return FAMILIES[family][1].format(s=subject)


def both_question(family: str, other: str, subject: str) -> str:
    """One question asking for two facts about one subject."""
    second = question(other, subject)
    return f"{question(family, subject)[:-1]}, and {second[0].lower()}{second[1:]}"


def needle() -> tuple[str, str, str]:
    """(needle sentence, retrieval question, key phrase the answer must contain)."""
    return (statement(NEEDLE_FAMILY, NEEDLE_SUBJECT, NEEDLE_VALUE), question(NEEDLE_FAMILY, NEEDLE_SUBJECT),
            f"{NEEDLE_VALUE} seconds")


def draw_facts(rng: random.Random, family: str, n: int, exclude: tuple = ()) -> list[tuple[str, str]]:
    """n (subject, value) pairs of one family: distinct subjects, distinct values where the kind allows,
    none of the `exclude` subjects or values."""
    subjects = rng.sample([s for s in SUBJECTS if s not in exclude], n)
    pool = [v for v in VALUES[FAMILIES[family][2]] if v not in exclude]
    values = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
    return list(zip(subjects, values, strict=True))


def document(rng: random.Random, paragraphs: list[str], num_words: int, facts: list[str]) -> str:
    """About num_words words of consecutive paragraphs from a random start, the fact sentences inserted at
    random sentence boundaries (each inside a paragraph, so it reads as part of it)."""
    start, chosen, count = rng.randrange(len(paragraphs)), [], 0
    while count < num_words:
        para = paragraphs[(start + len(chosen)) % len(paragraphs)]
        chosen.append(re.split(r"(?<=\.) ", para))
        count += len(para.split())
    for fact in facts:
        sentences = rng.choice(chosen)
        sentences.insert(rng.randint(0, len(sentences)), fact)
    return "\n\n".join(" ".join(sentences) for sentences in chosen)


# ---------------------------------------------------------------------------------------------
# 3. Training chats

def train_conversation(rng: random.Random, paragraphs: list[str], num_words: int) -> dict:
    """A document with 3-10 look-alike facts of one family (and 0-3 of another); the question asks about
    one of them. One in four asks about two facts of one subject, one from each family (then the other
    family has 3-6 look-alikes too), answered together; one in four has a follow-up round about another
    subject."""
    family, other = rng.sample(TRAIN_FAMILIES, 2)
    facts = draw_facts(rng, family, rng.randint(3, 10))
    (subject, value), follow = facts[0], facts[-1]
    two = rng.random() < 0.25
    extra = draw_facts(rng, other, rng.randint(3, 6) if two else rng.randint(0, 3), exclude=(subject,))
    sentences = [statement(family, s, v) for s, v in facts]
    if two:  # two facts about one subject: the other family's first entry is about it too
        second = extra[0][1]
        extra[0] = (subject, second)
        ask = both_question(family, other, subject)
        answer = f"{statement(family, subject, value)} {statement(other, subject, second)}"
    else:
        ask, answer = question(family, subject), statement(family, subject, value)
    sentences += [statement(other, s, v) for s, v in extra]
    rng.shuffle(sentences)
    messages = [{"role": "user", "content": f"{document(rng, paragraphs, num_words, sentences)}\n\n{INSTRUCTION} {ask}"},
                {"role": "assistant", "content": answer}]
    if rng.random() < 0.25 and follow != facts[0]:
        messages += [{"role": "user", "content": question(family, follow[0])},
                     {"role": "assistant", "content": statement(family, *follow)}]
    return {"messages": messages}


def write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        n = sum(1 for row in rows if f.write(json.dumps(row, ensure_ascii=False) + "\n"))
    return n


def write_train_data(out: Path, num_long: int, num_short: int, long_min_words: int, seed: int = 0) -> dict:
    """raw/long.jsonl (lengths long-tailed over long_min_words..8x, as in LongAlign-10k) and
    raw/sharegpt.jsonl (1-3 paragraphs). Returns counts for a summary line."""
    rng, paragraphs = random.Random(seed), stdlib_paragraphs(TRAIN_MODULES)
    lengths = [int(long_min_words * 8 ** (rng.random() ** 2)) for _ in range(num_long)]
    write_jsonl(out / "raw" / "long.jsonl", (train_conversation(rng, paragraphs, n) for n in lengths))
    write_jsonl(out / "raw" / "sharegpt.jsonl",
                (train_conversation(rng, paragraphs, rng.randint(40, 120)) for _ in range(num_short)))
    return {"num_long": num_long, "num_short": num_short, "paragraphs": len(paragraphs),
            "long_words_min": min(lengths, default=0), "long_words_max": max(lengths, default=0)}


# ---------------------------------------------------------------------------------------------
# 4. Evaluation: the Needle test's haystack and LongBench-Chat-shaped cases

def write_haystack(out: Path, words: int = 6000, every: int = 120, seed: int = 1) -> Path:
    """EVAL_MODULES prose with a look-alike of the needle about every `every` words (other subjects, other
    values), so the needle does not stand out: the haystack holds a dozen sentences of its shape per 2k tokens."""
    rng = random.Random(seed)
    paragraphs = held_out_paragraphs()
    n = words // every
    facts = draw_facts(rng, NEEDLE_FAMILY, min(n, len(SUBJECTS) - 1), exclude=(NEEDLE_SUBJECT, NEEDLE_VALUE))
    facts = (facts * (n // len(facts) + 1))[:n]
    text = document(rng, paragraphs, words, [statement(NEEDLE_FAMILY, s, v) for s, v in facts])
    out.mkdir(parents=True, exist_ok=True)
    (out / "stdlib_docs.txt").write_text(text + "\n", encoding="utf-8")
    return out


def lbc_cases(num_cases: int, min_words: int = 600, seed: int = 0) -> tuple[list, list]:
    """(test_cases, few_shots) in the published LongBench-Chat schema: a document of min_words..2x words
    with 3-6 look-alikes of two held-out families; the question asks for both facts about one subject;
    the reference answer states both. Few-shot scale: both facts (10), one of them (5), neither (2)."""
    rng, paragraphs = random.Random(seed), held_out_paragraphs()
    cases, shots = [], []
    for idx in range(1, num_cases + 1):
        fam_a, fam_b = rng.sample(LBC_FAMILIES, 2)
        a = draw_facts(rng, fam_a, rng.randint(3, 6))
        subject = a[0][0]
        b = draw_facts(rng, fam_b, rng.randint(3, 6), exclude=(subject,))
        b[0] = (subject, b[0][1])
        value_a, value_b = a[0][1], b[0][1]
        sentences = [statement(fam_a, s, v) for s, v in a] + [statement(fam_b, s, v) for s, v in b]
        rng.shuffle(sentences)
        query = both_question(fam_a, fam_b, subject)
        doc = document(rng, paragraphs, rng.randint(min_words, 2 * min_words), sentences)
        reference = f"{statement(fam_a, subject, value_a)} {statement(fam_b, subject, value_b)}"
        wrong_a = next(v for s, v in a if s != subject)
        wrong_b = next(v for s, v in b if s != subject)
        cases.append({"idx": idx, "prompt": f"{doc}\n\n{INSTRUCTION} {query}", "query": query, "answer": reference})
        shots.append([{"answer": reference, "score": 10},
                      {"answer": f"{statement(fam_a, subject, value_a)} {statement(fam_b, subject, wrong_b)}",
                       "score": 5},
                      {"answer": f"{statement(fam_a, subject, wrong_a)} {statement(fam_b, subject, wrong_b)}",
                       "score": 2}])
    return cases, shots


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "output folder (alias --out)"})
    num_long: int = field(default=160, metadata={"help": "long chats (LongAlign-10k stand-in)"})
    long_min_words: int = field(default=150, metadata={"help": "shortest long document; the longest is 8x"})
    num_short: int = field(default=60, metadata={"help": "short chats (ShareGPT stand-in)"})
    num_lbc: int = field(default=8, metadata={"help": "LongBench-Chat-shaped cases"})
    lbc_min_words: int = field(default=600, metadata={"help": "shortest LongBench-Chat-shaped document (longest 2x)"})
    seed: int = field(default=0, metadata={"help": "seed of the documents and facts"})


def main(argv=None) -> None:
    from tools import synthetic_eval

    (args,) = run_main(lambda a: parse_args((Args,), a, aliases={"--out": "--output_dir"}), argv)
    out = Path(args.output_dir)
    counts = write_train_data(out, args.num_long, args.num_short, args.long_min_words, args.seed)
    write_haystack(out / "haystack")
    synthetic_eval.write_files(out / "lbc", *lbc_cases(args.num_lbc, args.lbc_min_words, args.seed))
    print(f"demo_data: {counts['num_long']} long ({counts['long_words_min']}-{counts['long_words_max']} words) and "
          f"{counts['num_short']} short chats from {counts['paragraphs']} docstring paragraphs, a haystack, "
          f"{args.num_lbc} LongBench-Chat-shaped cases -> {out}")


if __name__ == "__main__":
    main()
