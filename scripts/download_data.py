"""Fetch the paper's training data and write it as chat JSONL, the input of pre_tokenize.py.

Run as:
    python scripts/download_data.py                                    # both, from the Hugging Face hub
    python scripts/download_data.py --sharegpt path/to/sharegpt.json   # ShareGPT from a local file
    python scripts/download_data.py --long_data path/to/folder --sharegpt ""   # long data only, local

Inputs (each a hub dataset id, a local dataset folder, or a local .json/.jsonl file):
    --long_data   LongAlign-10k (THUDM/LongAlign-10k): rows {"messages": [{"role", "content"}]}
    --sharegpt    ShareGPT in its native form: rows {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
Outputs:
    <output_dir>/long.jsonl       {"messages": [...]} per line
    <output_dir>/sharegpt.jsonl   {"messages": [...]} per line, cleaned as below

ShareGPT cleaning (in the spirit of open-instruct's ShareGPT conversion): speakers map to roles (human ->
user, gpt/chatgpt -> assistant, system -> system); a conversation with an unknown speaker, a non-text turn
or two turns of the same role in a row is dropped; a leading assistant turn (a conversation captured
mid-way) and a trailing unanswered user turn are removed; a conversation left without a complete round is
dropped. With --split_max_chars N a conversation is split at round boundaries into parts of at most N
characters (the system turn repeated in each part). Every drop is counted and printed.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from longalign import chat
from longalign.scriptargs import fail, parse_args, run_main


@dataclass
class Args:
    long_data: str = field(default="THUDM/LongAlign-10k", metadata={
        "help": "LongAlign-10k: hub id, local dataset folder or .json/.jsonl file; empty string to skip"})
    sharegpt: str = field(default="anon8231489123/ShareGPT_Vicuna_unfiltered", metadata={
        "help": "ShareGPT: hub id, local dataset folder or .json/.jsonl file; empty string to skip"})
    sharegpt_data_files: str | None = field(default="ShareGPT_V3_unfiltered_cleaned_split.json", metadata={
        "help": "the file to load inside a ShareGPT hub repository (ignored for local files)"})
    split: str = field(default="train", metadata={"help": "dataset split to read"})
    output_dir: str = field(default="data/raw", metadata={"help": "where long.jsonl and sharegpt.jsonl go"})
    split_max_chars: int = field(default=0, metadata={
        "help": "split ShareGPT conversations longer than this many characters at round boundaries; 0: never "
                "(the 64k window holds nearly all of them and pre_tokenize.py middle-truncates the rest)"})


def read_rows(source: str, split: str, data_files: str | None = None):
    """Rows (dicts) of a local .json/.jsonl file, a local dataset folder or a hub dataset."""
    path = Path(source)
    if path.is_file():
        with open(path, encoding="utf-8-sig") as f:
            if path.suffix == ".json":  # a JSON array, ShareGPT's native form
                yield from json.load(f)
            else:
                yield from (json.loads(line) for line in f if line.strip())
        return
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_dataset(str(path), split=split)
        else:
            ds = datasets.load_dataset(source, data_files=data_files, split=split)
    except Exception as e:  # the datasets library raises many kinds; the user needs one sentence
        fail(f"{source}: could not load it as a file, a dataset folder or a hub dataset "
             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the path or the network.")
    yield from ds


def clean_sharegpt(row, counts: Counter) -> list[dict] | None:
    """One ShareGPT row -> messages, or None (counted under its reason)."""
    turns = row.get("conversations") if isinstance(row, dict) else None
    if not isinstance(turns, list):
        counts["dropped: no conversations list"] += 1
        return None
    messages = chat.sharegpt_to_messages(turns)
    if any(not isinstance(m, dict) or m["role"] not in chat.ROLES for m in messages):
        counts["dropped: unknown speaker"] += 1
        return None
    if any(not isinstance(m["content"], str) for m in messages):
        counts["dropped: non-text turn"] += 1
        return None
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(system):]
    if body and body[0]["role"] == "assistant":
        body = body[1:]
        counts["repaired: leading assistant turn removed"] += 1
    if body and body[-1]["role"] == "user":
        body = body[:-1]
        counts["repaired: unanswered last turn removed"] += 1
    messages = system + body
    reason = chat.check_messages(messages) if body else "empty_messages"
    if reason:
        counts[f"dropped: {reason}"] += 1
        return None
    return messages


def split_rounds(messages: list[dict], max_chars: int) -> list[list[dict]]:
    """Split at round boundaries into parts of at most max_chars characters (a longer round stays whole)."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(system):]
    parts, current, size = [], [], 0
    for k in range(0, len(body), 2):
        rnd = body[k:k + 2]
        chars = sum(len(m["content"]) for m in rnd)
        if current and size + chars > max_chars:
            parts.append(system + current)
            current, size = [], 0
        current += rnd
        size += chars
    return parts + [system + current]


def write(path: Path, conversations) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            n += 1
    return n


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}

    if args.long_data:
        counts = Counter()

        def long_rows():
            for row in tqdm(read_rows(args.long_data, args.split), desc="LongAlign-10k", unit=" rows"):
                messages = row.get("messages") if isinstance(row, dict) else None
                if messages is None and isinstance(row, dict) and "conversations" in row:
                    messages = chat.sharegpt_to_messages(row["conversations"])
                if messages is None:  # kept otherwise: pre_tokenize.py accounts for any other defect
                    counts["dropped: no messages"] += 1
                    continue
                yield messages

        summary["long"] = {"written": write(out / "long.jsonl", long_rows()), **counts}

    if args.sharegpt:
        counts = Counter()

        def sharegpt_rows():
            rows = read_rows(args.sharegpt, args.split, args.sharegpt_data_files)
            for row in tqdm(rows, desc="ShareGPT", unit=" rows"):
                counts["read"] += 1
                messages = clean_sharegpt(row, counts)
                if messages is None:
                    continue
                parts = split_rounds(messages, args.split_max_chars) if args.split_max_chars else [messages]
                counts["split into parts"] += len(parts) > 1
                yield from parts

        summary["sharegpt"] = {"written": write(out / "sharegpt.jsonl", sharegpt_rows()), **counts}

    for name, s in summary.items():
        print(f"download_data: {name}: " + ", ".join(f"{k} {v}" for k, v in s.items()) + f" -> {out}")
    return summary


if __name__ == "__main__":
    main()
