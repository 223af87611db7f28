"""Needle test, step 1: build the prompts (a haystack of filler text with one fact, the needle, hidden at
a chosen depth) at exact token counts of the model's own tokenizer.

For each context length L and depth d: the context holds L - final_context_length_buffer tokens (the
buffer leaves room for the question and the chat template), and the needle starts after d % of the
haystack tokens, moved to the nearest sentence end within `snap_window_percent` of the context. The
sentence ends are found with THIS tokenizer (tokens whose text ends in . ! ? 。 ！ ？ before a space):
the original looked for one hard-coded ChatGLM token id, never found it in other tokenizers, backed off
to the start and put the needle at depth 0 for every non-ChatGLM model.

    haystack tokens  h0 h1 ... h(k-1) | needle tokens | hk ... h(n-1)        k = d% of n, snapped
    context tokens   = n + len(needle) = L - buffer   (checked by re-encoding the final text)

Run as:
    python Needle_test/prompt.py --tokenizer THUDM/LongAlign-7B-64k --haystack_dir PaulGrahamEssays \
        --context_lengths 1000,4000 --depth_percents 0,50,100 --output_dir runs/needle/prompts
    (defaults come from Needle_test/config-prompt.yaml; every key is also a flag)

Inputs: a tokenizer; --haystack_dir of .txt files read in sorted order (none given: the built-in
synthetic haystack of tools/synthetic.py).
Outputs: <output_dir>/prompts.jsonl, one line per (length, depth): context_length, depth_percent,
context_tokens, needle_token_index, needle_depth_percent (measured), snapped, messages, needle,
retrieval_question; <output_dir>/meta.json with the settings.
"""

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from longalign.scriptargs import UserError, comma_list, parse_args, run_main
from longalign.tokenization import load_tokenizer
from tools import synthetic

CONFIG = Path(__file__).with_name("config-prompt.yaml")
TERMINATORS = (".", "!", "?", "。", "！", "？")


@dataclass
class Args:
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer (model folder or hub id) that measures the contexts"})
    haystack_dir: str | None = field(default=None, metadata={
        "help": "folder of .txt files (read in sorted order, repeated if too short); empty = built-in synthetic haystack"})
    needle: str = field(default="", metadata={"help": "the fact to hide (one sentence)"})
    retrieval_question: str = field(default="", metadata={"help": "the question whose answer is the needle"})
    prompt_template: str = field(default="{context}\n\nRead the document above and answer. {question}", metadata={
        "help": "the user message; {context} and {question} are filled in"})
    system_prompt: str = field(default="", metadata={"help": "optional system message (empty = none)"})
    context_lengths: str | None = field(default=None, metadata={
        "help": "comma-separated context lengths in tokens; empty = context_lengths_min..max in num_intervals steps"})
    context_lengths_min: int = field(default=1000, metadata={"help": "shortest context (when --context_lengths is empty)"})
    context_lengths_max: int = field(default=60000, metadata={"help": "longest context"})
    context_lengths_num_intervals: int = field(default=10, metadata={"help": "number of lengths, evenly spaced"})
    depth_percents: str | None = field(default=None, metadata={
        "help": "comma-separated needle depths in percent; empty = depth_percent_min..max in intervals steps"})
    depth_percent_min: float = field(default=0, metadata={"help": "shallowest depth (when --depth_percents is empty)"})
    depth_percent_max: float = field(default=100, metadata={"help": "deepest depth"})
    depth_percent_intervals: int = field(default=11, metadata={"help": "number of depths"})
    depth_interval_type: str = field(default="linear", metadata={"help": "linear | sigmoid (denser near 50 %)"})
    final_context_length_buffer: int = field(default=200, metadata={
        "help": "tokens left out of each context for the question, the template and the answer"})
    snap_window_percent: float = field(default=1.5, metadata={
        "help": "how far (percent of the context) the needle may move to reach a sentence end"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a tokenizer that is the checkpoint's own code (not needed for ChatGLM3)"})
    output_dir: str = field(default="runs/needle/prompts", metadata={"help": "where prompts.jsonl goes"})

    def __post_init__(self):
        if not self.tokenizer:
            raise UserError("--tokenizer is required (a model folder or hub id)")
        if not self.needle.strip() or not self.retrieval_question.strip():
            raise UserError("--needle and --retrieval_question must not be empty (see config-prompt.yaml)")
        if self.depth_interval_type not in ("linear", "sigmoid"):
            raise UserError(f"--depth_interval_type {self.depth_interval_type} is not linear or sigmoid; pick one")
        if "{context}" not in self.prompt_template or "{question}" not in self.prompt_template:
            raise UserError("--prompt_template must contain {context} and {question}")
        self.lengths = (comma_list(self.context_lengths, int, "context_lengths") if self.context_lengths else
                        [round(self.context_lengths_min + i * (self.context_lengths_max - self.context_lengths_min)
                               / max(self.context_lengths_num_intervals - 1, 1))
                         for i in range(self.context_lengths_num_intervals)])
        self.depths = (comma_list(self.depth_percents, float, "depth_percents") if self.depth_percents else
                       spaced_depths(self.depth_percent_min, self.depth_percent_max, self.depth_percent_intervals,
                                     self.depth_interval_type))
        if any(d < 0 or d > 100 for d in self.depths):
            raise UserError(f"depths must lie in 0..100, got {self.depths}")
        if min(self.lengths) <= self.final_context_length_buffer:
            raise UserError(f"context length {min(self.lengths)} leaves nothing after the "
                            f"{self.final_context_length_buffer}-token buffer; lower --final_context_length_buffer")


def spaced_depths(lo: float, hi: float, n: int, kind: str) -> list[float]:
    xs = [lo + i * (hi - lo) / max(n - 1, 1) for i in range(n)]
    if kind == "sigmoid":  # a logistic squeeze towards the middle; the ends stay at 0 and 100
        xs = [x if x in (0, 100) else round(100 / (1 + math.exp(-0.1 * (x - 50))), 3) for x in xs]
    return [round(x, 3) for x in xs]


# ---------------------------------------------------------------------------------------------
# 1. The haystack as token ids of this tokenizer

def read_haystack(haystack_dir: str | None) -> str:
    if not haystack_dir:
        with tempfile.TemporaryDirectory() as tmp:  # the built-in synthetic essays (seeded, ~80k words)
            synthetic.write_haystack(Path(tmp))
            return read_haystack(tmp)
    files = sorted(Path(haystack_dir).glob("*.txt"))
    if not files:
        raise UserError(f"--haystack_dir {haystack_dir} has no .txt files; point it at a folder of essays "
                        "(Needle_test/README.md) or leave it empty for the synthetic haystack")
    return "".join(f.read_text(encoding="utf-8") for f in files)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------
# 2. Sentence ends, found with this tokenizer, and the snapped needle position

def sentence_ends(tokenizer, ids: list[int]) -> list[int]:
    """Positions p (0 < p < len) such that ids[p-1] closes a sentence: its text ends with a terminator
    and whitespace follows (so "3.5" or "e.g." mid-word does not count)."""
    text_of = {t: tokenizer.decode([t]) for t in set(ids)}
    closing = {t for t, s in text_of.items() if s.rstrip().endswith(TERMINATORS)}
    ends = []
    for p in range(1, len(ids)):
        if ids[p - 1] not in closing:
            continue
        own = text_of[ids[p - 1]]
        if own != own.rstrip() or tokenizer.decode(ids[p - 1:p + 1])[len(own):][:1].isspace():
            ends.append(p)
    return ends


def snap(n_haystack: int, depth: float, ends: list[int], window: int) -> tuple[int, bool]:
    """(position, snapped): depth 0 = start, 100 = end, else the sentence end nearest to depth% of the
    haystack within `window` tokens (earlier wins a tie); none there -> the exact token position.
    snapped says whether the needle follows a sentence end."""
    if depth <= 0:
        return 0, True
    if depth >= 100:  # the very end, even if the haystack was cut mid-sentence there
        return n_haystack, n_haystack in ends
    target = round(n_haystack * depth / 100)
    near = [p for p in ends if abs(p - target) <= window and p <= n_haystack]
    if not near:
        return target, False
    return min(near, key=lambda p: (abs(p - target), p)), True


def join(a: str, b: str) -> str:
    """a + b with one space between them unless one side already has whitespace at the seam."""
    if not a or not b or a[-1].isspace() or b[0].isspace():
        return a + b
    return a + " " + b


# ---------------------------------------------------------------------------------------------
# 3. One context of exactly `total` tokens

def build_context(tokenizer, hay_ids: list[int], ends: list[int], needle: str, total: int, depth: float,
                  window_percent: float) -> dict:
    """Cut the haystack so that haystack + needle re-encode to `total` tokens. Decoding and re-encoding
    can merge tokens at the seams, so the cut is corrected until the count is exact (a few rounds)."""
    n_needle = len(encode(tokenizer, needle))
    n_hay = total - n_needle
    for _ in range(8):
        if n_hay > len(hay_ids):
            raise UserError(f"the haystack has {len(hay_ids)} tokens, fewer than the {n_hay} a context needs")
        pos, snapped = snap(n_hay, depth, ends, max(1, round(total * window_percent / 100)))
        before = join(tokenizer.decode(hay_ids[:pos]), needle)
        text = join(before, tokenizer.decode(hay_ids[pos:n_hay]))
        count = len(encode(tokenizer, text))
        if count == total:
            break
        n_hay += total - count
    start = len(encode(tokenizer, before)) - len(encode(tokenizer, needle.strip()))  # first needle token
    return {"context": text, "context_tokens": count, "needle_token_index": start, "snapped": snapped,
            "needle_depth_percent": round(100 * start / max(count - n_needle, 1), 3)}


def main(argv=None):
    (args,) = parse_args(Args, argv, default_config=CONFIG)
    out = Path(args.output_dir)
    settings = asdict(args) | {"lengths": args.lengths, "depths": args.depths}
    meta = out / "meta.json"
    if (out / "prompts.jsonl").is_file() and meta.is_file() and json.loads(meta.read_text(encoding="utf-8")) == settings:
        # deterministic: the same settings would write the same prompts (re-tokenising a 60k-token grid costs minutes)
        print(f"{out / 'prompts.jsonl'} was made by this same command: kept")
        return
    tokenizer = load_tokenizer(args.tokenizer, trust_remote_code=args.trust_remote_code)
    text = read_haystack(args.haystack_dir)
    hay_ids = encode(tokenizer, text)
    need = max(args.lengths)
    while len(hay_ids) < need + 64:  # repeat a short haystack, as the original does
        text += "\n\n" + text
        hay_ids = encode(tokenizer, text)
    ends = sentence_ends(tokenizer, hay_ids[:need + 64])
    print(f"needle prompts: {len(args.lengths)} lengths x {len(args.depths)} depths, tokenizer {args.tokenizer}, "
          f"{len(ends)} sentence ends in the first {need + 64} haystack tokens")

    out.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)  # written last: a run killed while writing prompts leaves no "kept" behind
    worst, rows = 0.0, []
    for length in tqdm(args.lengths, desc="contexts"):
        for depth in args.depths:
            c = build_context(tokenizer, hay_ids, ends, args.needle.strip(), length - args.final_context_length_buffer,
                              depth, args.snap_window_percent)
            worst = max(worst, abs(c["needle_depth_percent"] - depth))
            user = args.prompt_template.format(context=c.pop("context"), question=args.retrieval_question)
            messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else []) + \
                [{"role": "user", "content": user}]
            rows.append({"context_length": length, "depth_percent": depth, **c, "messages": messages,
                         "needle": args.needle.strip(), "retrieval_question": args.retrieval_question})
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    meta.write_text(json.dumps(settings, indent=1, ensure_ascii=False))
    print(f"wrote {len(rows)} prompts -> {out / 'prompts.jsonl'}; largest depth error {worst:.2f} % of the haystack")


if __name__ == "__main__":
    run_main(main)
