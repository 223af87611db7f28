"""Tokenization speed: our per-piece batched tokenization against the original's method, side by side.

Run as:
    python bench/bench_tokenize.py [--num_long 200 --long_min_words 2000 --num_short 2000 --template llama]
    python bench/bench_tokenize.py --tokenizer data/cache/mistral-tokenizer        # a real tokenizer folder
    python bench/bench_tokenize.py --tokenizer data/cache/mistral-tokenizer --compare   # encodings, not speed

The original's method, rebuilt here as a baseline: per sample, format the whole conversation with marker
tokens around each answer, call the tokenizer once on that string, then walk the ids in Python to drop
the markers, label the answers and add an EOS after each. Ours (longalign/chat.py, what pre_tokenize.py
runs): cut each conversation into context and answer pieces, tokenize the pieces of a whole batch of
conversations in one call of the fast tokenizer (its Rust threads use every core), concatenate with numpy.
Both run on the same parsed conversations (synthetic, LongAlign-shaped: long documents + short chats,
tools/synthetic.py) with the same tokenizer (the synthetic one trained here, or --tokenizer PATH loaded
with longalign.tokenization.load_tokenizer); both outputs are checked to agree on the answers. The
end-to-end pre_tokenize.py run (reading, parsing, writing the store) is timed too.

--compare prints, instead of speeds, how our store's ids differ from two other ways of encoding the same
conversations, by kind: one tokenizer call on the whole text (special tokens written out), and the original
LongAlign store (rebuilt from its behaviour: `original_longalign`).
"""

import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import pre_tokenize
from longalign import chat
from longalign.scriptargs import UserError, parse_args, run_main
from longalign.tokenization import load_tokenizer
from tools import synthetic

START, END = "<|answer_start|>", "<|answer_end|>"


def original_method(conversations, template, tokenizer):
    """One tokenizer call per sample on the full string with marker tokens."""
    start_id, end_id = tokenizer.convert_tokens_to_ids([START, END])
    prefix = chat.special_prefix(tokenizer)
    out = []
    for messages in conversations:
        marked = [dict(m, content=f"{START}{m['content']}{END}") if m["role"] == "assistant" else m
                  for m in messages]
        text = "".join(t for t, _ in chat.conversation_pieces(marked, template, tokenizer))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids, labels, target = list(prefix), [-100] * len(prefix), False
        for t in ids:
            if t == start_id:
                target = True
            elif t == end_id:
                input_ids.append(tokenizer.eos_token_id)
                labels.append(tokenizer.eos_token_id)
                target = False
            else:
                input_ids.append(t)
                labels.append(t if target else -100)
        out.append((np.array(input_ids), np.array(labels)))
    return out


def original_longalign(conversations, template, tokenizer, strip=True, eos_after_every_answer=False):
    """The original LongAlign store, rebuilt from how it behaved (not from its code): the conversation's text
    with a marker at each answer boundary through transformers 4.33's slow tokenizer. That tokenized each
    stretch between markers on its own (SentencePiece's dummy prefix on each, as ours does), stripped the
    whitespace next to every marker (4.33 stripped both sides of a plain-string added token), and put one
    EOS at the very end, none after earlier answers. strip=False, eos_after_every_answer=True gives our
    store, which is how the two kinds of difference are told apart. -> [(input_ids, labels)]"""
    prefix, eos = chat.special_prefix(tokenizer), tokenizer.eos_token_id
    out = []
    for messages in conversations:
        pieces = chat.conversation_pieces(messages, template, tokenizer)
        if strip:  # a marker follows every piece and precedes all but the first
            pieces = [(t.strip() if k else t.rstrip(), a) for k, (t, a) in enumerate(pieces)]
        ids = chat.token_ids(tokenizer, [t for t, _ in pieces], split_special_tokens=True)
        input_ids, labels = list(prefix), [-100] * len(prefix)
        last = max(k for k, (_, a) in enumerate(pieces) if a)
        for k, ((_, answer), piece) in enumerate(zip(pieces, ids, strict=True)):
            piece = piece + [eos] if answer and (eos_after_every_answer or k == last) else piece
            input_ids += piece
            labels += piece if answer else [-100] * len(piece)
        out.append((input_ids, labels))
    return out


def one_call(conversations, template, tokenizer):
    """Each whole conversation in one tokenizer call: its text with the special tokens written out (the
    prefix, an EOS after each answer), as chat.build_prompt renders it. -> [input_ids]"""
    return [tokenizer(chat.build_prompt(m, template, tokenizer), add_special_tokens=False)["input_ids"]
            for m in conversations]


def compare(conversations, template, tokenizer) -> dict:
    """How our store differs from a one-call tokenization and from the original LongAlign store, by kind,
    and whether our generation prompts are exactly the training context (encode_prompt)."""
    store = chat.encode_conversations(conversations, template, tokenizer)
    if [list(x) for x in original_longalign(conversations, template, tokenizer, False, True)] != \
            [list(x) for x in store]:
        raise AssertionError("the rebuilt original without its two differences must equal our store")
    no_eos = original_longalign(conversations, template, tokenizer, strip=False)
    stripped = original_longalign(conversations, template, tokenizer, eos_after_every_answer=True)
    original = original_longalign(conversations, template, tokenizer)
    calls = one_call(conversations, template, tokenizer)
    multi = [sum(m["role"] == "assistant" for m in c) > 1 for c in conversations]
    rows = {"n": len(conversations), "multi_round": sum(multi)}
    rows["one_call_identical"] = sum(ids == c for (ids, _), c in zip(store, calls, strict=True))
    # Where they differ, is it only that ours cuts the text at each answer's start? Encoding each context piece
    # together with the answer that follows it (still cut at the EOS) must then give the one-call ids.
    joined = []
    for m in conversations:
        pieces = chat.conversation_pieces(m, template, tokenizer)
        texts = [t + pieces[k + 1][0] if k + 1 < len(pieces) and pieces[k + 1][1] else t
                 for k, (t, a) in enumerate(pieces) if not a]
        ids = list(chat.special_prefix(tokenizer))
        for k, piece in enumerate(chat.token_ids(tokenizer, texts, split_special_tokens=True)):
            ids += piece + ([tokenizer.eos_token_id] if k < len(texts) - 1 or pieces[-1][1] else [])
        joined.append(ids)
    rows["one_call_answer_split"] = sum(ids != c and j == c for (ids, _), c, j in zip(store, calls, joined, strict=True))
    rows["one_call_other"] = len(store) - rows["one_call_identical"] - rows["one_call_answer_split"]
    rows["original_identical"] = sum(o == s for o, s in zip(original, store, strict=True))
    rows["original_no_eos"] = sum(a != s for a, s in zip(no_eos, store, strict=True))
    rows["original_stripped"] = sum(a != s for a, s in zip(stripped, store, strict=True))
    rows["original_identical_single_round"] = sum(o == s for o, s, m in zip(original, store, multi, strict=True)
                                                  if not m)
    rows["prompt_is_training_context"] = 0
    for m, (ids, labels) in zip(conversations, store, strict=True):
        prompt = chat.encode_prompt(m[:-1], template, tokenizer)
        rows["prompt_is_training_context"] += ids[:len(prompt)] == prompt and labels[len(prompt)] != -100
    return rows


def print_comparison(rows: dict, template: str, name: str) -> None:
    n, single = rows["n"], rows["n"] - rows["multi_round"]
    print(f"\n{n} generated conversations ({rows['multi_round']} multi-round), template {template}, tokenizer {name}")
    print(f"  our store vs one call on the same text:   {rows['one_call_identical']}/{n} identical; differ: "
          f"{rows['one_call_answer_split']} only by the cut at each answer's start (the answer, encoded on its own, "
          f"starts with SentencePiece's ▁), {rows['one_call_other']} otherwise")
    print(f"  our store vs the original LongAlign store: {rows['original_identical']}/{n} identical "
          f"({rows['original_identical_single_round']}/{single} single-round); differ by: no EOS after a non-final "
          f"answer {rows['original_no_eos']}, whitespace stripped at its markers {rows['original_stripped']}")
    print(f"  our prompt ids == the training context:    {rows['prompt_is_training_context']}/{n}")


def ours(conversations, template, tokenizer, batch_size=64):
    """What pre_tokenize.py does per batch (longalign/chat.py), in memory."""
    prefix = chat.special_prefix(tokenizer)
    out = []
    for s in range(0, len(conversations), batch_size):
        batch = [chat.conversation_pieces(m, template, tokenizer) for m in conversations[s:s + batch_size]]
        for piece_ids, is_answer in chat.encode_pieces(batch, template, tokenizer, prefix=prefix):
            ids = np.fromiter(itertools.chain.from_iterable(piece_ids), dtype=np.int64)
            mask = np.repeat(np.array(is_answer, dtype=bool), [len(p) for p in piece_ids])
            out.append((ids, np.where(mask, ids, -100)))
    return out


def original_end_to_end(conversations, template, tokenizer, max_length, out_file):
    """The original's method and storage: every sample right-padded to max_length int64 ids and labels."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id  # Llama has none
    with open(out_file, "wb") as f:
        for ids, labels in original_method(conversations, template, tokenizer):
            row = np.full((2, max_length), pad, dtype=np.int64)
            row[0, :len(ids)], row[1, :len(ids)], row[1, len(ids):] = ids, labels, -100
            f.write(row.tobytes())
    return os.path.getsize(out_file)


def ours_end_to_end(folder, template, out_dir, num_proc, tokenizer_path):
    meta = pre_tokenize.main(["--model_name_or_path", str(tokenizer_path), "--long_file", str(folder / "raw" / "long.jsonl"),
                              "--short_file", str(folder / "raw" / "sharegpt.jsonl"), "--datanum", "all",
                              "--template", template, "--output_dir", str(out_dir), "--num_proc", str(num_proc)])
    return sum(f.stat().st_size for f in Path(out_dir).iterdir() if f.suffix != ".json"), meta


@dataclass
class Args:
    num_long: int = field(default=100, metadata={"help": "long conversations"})
    long_min_words: int = field(default=2000, metadata={"help": "shortest long document (longest 8x)"})
    num_short: int = field(default=1000, metadata={"help": "short chats"})
    template: str = field(default="llama", metadata={"help": f"chat format: {' | '.join(chat.TEMPLATES)}"})
    max_length: int = field(default=65536, metadata={"help": "the original pads every sample to this"})
    num_proc: int = field(default=1, metadata={"help": "pre_tokenize.py workers in the end-to-end run"})
    repeats: int = field(default=3, metadata={"help": "interleaved repeats; the best time of each counts"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "a tokenizer folder or hub id (load_tokenizer); default: a byte-level BPE trained on the synthetic "
                "text (vocab 8000)"})
    compare: bool = field(default=False, metadata={"help": "print how the encodings differ (no timing)"})

    def __post_init__(self):
        if self.template not in chat.TEMPLATES:
            raise UserError(f"--template {self.template} is not one of {', '.join(chat.TEMPLATES)}; pick one")


def main(argv=None):
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    # ours batches pieces through the fast tokenizer's Rust threads: set here, not defaulted, because
    # scripts/setup_env.sh exports "false" (with it ours ran on one thread: 1.23x instead of 2.67x)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.write_chat_data(tmp, args.num_long, args.num_short, args.long_min_words, seed=0)
        convs = [json.loads(x)["messages"] for f in ("long.jsonl", "sharegpt.jsonl")
                 for x in (tmp / "raw" / f).read_text().splitlines()]
        if args.tokenizer:
            tok_path = args.tokenizer
            tok, tok_marked = (load_tokenizer(tok_path) for _ in range(2))
        else:
            tok_path = tmp / "tokenizer"
            tok = synthetic.train_tokenizer(tok_path, vocab_size=8000)
            tok_marked = synthetic.train_tokenizer(tmp / "tokenizer_marked", vocab_size=8000)
        if args.compare:
            print_comparison(compare(convs, args.template, tok), args.template, args.tokenizer or "synthetic BPE")
            return
        tok_marked.add_special_tokens({"additional_special_tokens": [START, END]})

        best = {k: float("inf") for k in ("orig", "ours", "orig_e2e", "ours_e2e")}
        cpu = dict(best)  # CPU seconds of this process, all threads: the work, whatever else runs
        for _ in range(args.repeats):  # interleaved, so a busy moment of the shared machine hits both
            for key, fn in (("orig", lambda: original_method(convs, args.template, tok_marked)),
                            ("ours", lambda: ours(convs, args.template, tok)),
                            ("orig_e2e", lambda: original_end_to_end(convs, args.template, tok_marked,
                                                                     args.max_length, tmp / "orig.bin")),
                            ("ours_e2e", lambda: ours_end_to_end(tmp, args.template, tmp / "store", args.num_proc,
                                                                 tok_path))):
                t0, c0 = time.perf_counter(), time.process_time()
                result = fn()
                best[key] = min(best[key], time.perf_counter() - t0)
                cpu[key] = min(cpu[key], time.process_time() - c0)
                if key == "orig":
                    ref = result
                elif key == "ours":
                    for (_, a_lab), (_, b_lab) in zip(ref, result, strict=True):  # the same answers
                        assert [t for t in a_lab if t != -100] == [t for t in b_lab if t != -100]
                elif key == "orig_e2e":
                    orig_bytes = result
                    (tmp / "orig.bin").unlink()
                else:
                    our_bytes, meta = result

    n, ntok = len(convs), meta["num_tokens"]
    print(f"\n{n} conversations ({args.num_long} long, {args.num_short} short), {ntok:,} tokens, template "
          f"{args.template}, tokenizer {args.tokenizer or 'synthetic BPE'}, {os.cpu_count()} CPUs, best of "
          f"{args.repeats} interleaved runs")
    print(f"  tokenize + labels   original (1 call/sample, markers) {n / best['orig']:7,.0f} samples/s   "
          f"ours (per-piece, batched) {n / best['ours']:7,.0f} samples/s   {best['orig'] / best['ours']:.2f}x")
    print(f"  CPU time            original {cpu['orig']:6.2f} s   ours {cpu['ours']:6.2f} s (all threads)   "
          f"{cpu['orig'] / cpu['ours']:.2f}x less work")
    print(f"  end to end to disk  original (padded to {args.max_length} int64)  {n / best['orig_e2e']:7,.0f} "
          f"samples/s {orig_bytes / ntok:8.1f} B/token   pre_tokenize.py --num_proc {args.num_proc} "
          f"{n / best['ours_e2e']:7,.0f} samples/s {our_bytes / ntok:5.2f} B/token   "
          f"{best['orig_e2e'] / best['ours_e2e']:.2f}x")


if __name__ == "__main__":
    main()
