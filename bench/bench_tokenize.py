"""Tokenization speed: our per-piece batched tokenization against the original's method, side by side.

Run as:
    python bench/bench_tokenize.py [--num_long 200 --long_min_words 2000 --num_short 2000 --template llama]

The original's method, rebuilt here as a baseline: per sample, format the whole conversation with marker
tokens around each answer, call the tokenizer once on that string, then walk the ids in Python to drop
the markers, label the answers and add an EOS after each. Ours (longalign/chat.py, what pre_tokenize.py
runs): cut each conversation into context and answer pieces, tokenize the pieces of a whole batch of
conversations in one call of the fast tokenizer (its Rust threads use every core), concatenate with numpy.
Both run on the same parsed conversations (synthetic, LongAlign-shaped: long documents + short chats,
longalign/synthetic.py) with the same tokenizer; both outputs are checked to agree on the answers. The
end-to-end pre_tokenize.py run (reading, parsing, writing the store) is timed too.
"""

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
ROOT = Path(__file__).resolve().parents[1]
import sys  # noqa: E402

sys.path.insert(0, str(ROOT))
import pre_tokenize  # noqa: E402
from longalign import chat, synthetic  # noqa: E402

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
    with open(out_file, "wb") as f:
        for ids, labels in original_method(conversations, template, tokenizer):
            row = np.full((2, max_length), tokenizer.pad_token_id, dtype=np.int64)
            row[0, :len(ids)], row[1, :len(ids)], row[1, len(ids):] = ids, labels, -100
            f.write(row.tobytes())
    return os.path.getsize(out_file)


def ours_end_to_end(folder, template, out_dir, num_proc):
    meta = pre_tokenize.main(["--model", str(folder / "tokenizer"), "--long_file", str(folder / "raw" / "long.jsonl"),
                              "--short_file", str(folder / "raw" / "sharegpt.jsonl"), "--datanum", "all",
                              "--template", template, "--out_dir", str(out_dir), "--num_proc", str(num_proc)])
    return sum(f.stat().st_size for f in Path(out_dir).iterdir() if f.suffix != ".json"), meta


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_long", type=int, default=100, help="long conversations")
    p.add_argument("--long_min_words", type=int, default=2000, help="shortest long document (longest 8x)")
    p.add_argument("--num_short", type=int, default=1000, help="short chats")
    p.add_argument("--template", default="llama", choices=chat.TEMPLATES, help="chat format")
    p.add_argument("--max_length", type=int, default=65536, help="the original pads every sample to this")
    p.add_argument("--num_proc", type=int, default=1, help="pre_tokenize.py workers in the end-to-end run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best time of each counts")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.write_chat_data(tmp, args.num_long, args.num_short, args.long_min_words, seed=0)
        tok = synthetic.train_tokenizer(tmp / "tokenizer", vocab_size=8000)
        convs = [json.loads(x)["messages"] for f in ("long.jsonl", "sharegpt.jsonl")
                 for x in (tmp / "raw" / f).read_text().splitlines()]
        tok_marked = synthetic.train_tokenizer(tmp / "tokenizer_marked", vocab_size=8000)
        tok_marked.add_special_tokens({"additional_special_tokens": [START, END]})

        best = {k: float("inf") for k in ("orig", "ours", "orig_e2e", "ours_e2e")}
        for _ in range(args.repeats):  # interleaved, so a busy moment of the shared machine hits both
            for key, fn in (("orig", lambda: original_method(convs, args.template, tok_marked)),
                            ("ours", lambda: ours(convs, args.template, tok)),
                            ("orig_e2e", lambda: original_end_to_end(convs, args.template, tok_marked,
                                                                     args.max_length, tmp / "orig.bin")),
                            ("ours_e2e", lambda: ours_end_to_end(tmp, args.template, tmp / "store", args.num_proc))):
                t0 = time.perf_counter()
                result = fn()
                best[key] = min(best[key], time.perf_counter() - t0)
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
          f"{args.template}, {os.cpu_count()} CPUs, best of {args.repeats} interleaved runs")
    print(f"  tokenize + labels   original (1 call/sample, markers) {n / best['orig']:7,.0f} samples/s   "
          f"ours (per-piece, batched) {n / best['ours']:7,.0f} samples/s   {best['orig'] / best['ours']:.2f}x")
    print(f"  end to end to disk  original (padded to {args.max_length} int64)  {n / best['orig_e2e']:7,.0f} "
          f"samples/s {orig_bytes / ntok:8.1f} B/token   pre_tokenize.py --num_proc {args.num_proc} "
          f"{n / best['ours_e2e']:7,.0f} samples/s {our_bytes / ntok:5.2f} B/token   "
          f"{best['orig_e2e'] / best['ours_e2e']:.2f}x")


if __name__ == "__main__":
    main()
