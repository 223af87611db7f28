"""Tokenize chat data for LongAlign: raw JSONL conversations -> a tokenized store folder.

The long data (LongAlign-10k, `--datanum` of it chosen by a seeded shuffle) is mixed with all of the
short data (ShareGPT), every conversation is formatted and tokenized with only the assistant's tokens
(and the EOS ending each answer) as targets, and the store is written in a seeded shuffled order.

Run as:
    python pre_tokenize.py --model_name_or_path chatglm --datanum 10k                  # the paper's ChatGLM3-6B-64k data
    python pre_tokenize.py --model_name_or_path llama --datanum 10k --max_length 65536  # Llama-2-7B-64k
    python pre_tokenize.py --model_name_or_path Qwen/Qwen2.5-7B --template chat_template --datanum all

Inputs:
    --long_file, --short_file   JSONL, one conversation per line: {"messages": [{"role", "content"}]} or
                                ShareGPT's {"conversations": [{"from", "value"}]} (both are read)
    --model_name_or_path        a tokenizer: `chatglm`/`llama` (the paper's base models), a hub id or a folder
Outputs (--output_dir, default data/<model>/<datanum>/, read by sort_and_group.py and train.py):
    input_ids.bin, targets.bin, lengths.npy, num_targets.npy   the store (longalign/store.py)
    meta.json   tokenizer, template, max_length, ids, seed, datanum and the accounting of every line:
                kept + sum(skipped.values()) == lines_read; `split` lines became one sequence per answer
                (a chat template such as Qwen3's, see longalign/chat.py), so num_sequences >= kept

Bad lines never stop the run (unless --strict) and never vanish: each is repaired and kept or skipped,
and counted under its reason in meta.json (docs/data.md lists them).
"""

import itertools
import json
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from jinja2 import TemplateError
from tqdm import tqdm

from longalign import chat, packing, tokenization
from longalign.scriptargs import UserError, fail, parse_args, run_main
from longalign.store import StoreWriter


@dataclass
class Args:
    model_name_or_path: str = field(default="chatglm", metadata={
        "help": "tokenizer to use: `chatglm` or `llama` (aliases of the paper's THUDM/LongAlign-6B-64k-base "
                "and THUDM/LongAlign-7B-64k-base), a hub id or a local folder; only the tokenizer is loaded"})
    template: str | None = field(default=None, metadata={
        "help": "chatglm | llama | chat_template (the tokenizer's own); default: the alias's paper format, "
                "else chat_template"})
    datanum: str = field(default="10k", metadata={
        "help": "how many long samples to mix in, chosen by a seeded shuffle: 0k, 5k, 10k, a count, or `all`"})
    long_file: str = field(default="data/raw/long.jsonl", metadata={"help": "long conversations (LongAlign-10k)"})
    short_file: str = field(default="data/raw/sharegpt.jsonl", metadata={
        "help": "short conversations (ShareGPT), all used; empty string for none"})
    max_length: int = field(default=65536, metadata={"help": "longest sequence in tokens (64k in the paper)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "output folder; default data/<the model's last path part>/<datanum>"})
    seed: int = field(default=42, metadata={"help": "seed of the datanum choice and of the store's order"})
    num_proc: int = field(default=1, metadata={
        "help": "tokenizer worker processes; 1 tokenizes in this process with the fast tokenizer's threads"})
    batch_size: int = field(default=64, metadata={"help": "conversations per batched tokenizer call"})
    truncation: str = field(default="middle", metadata={
        "help": "over-long samples: `middle` cuts the middle of the longest user turn (the question at its "
                "end and every answer survive), `drop` skips them; both are counted"})
    strict: bool = field(default=False, metadata={
        "help": "stop at the first bad line (one that would be skipped or changed) with its file and line"})
    max_chars_per_token: float = field(default=16.0, metadata={
        "help": "generous bound on characters per token, used to cut huge lines by characters before "
                "tokenizing so a 20 MB line cannot stall the run"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow a tokenizer that is code shipped with the checkpoint; never needed for the paper's "
                "ChatGLM3 and Llama models (longalign/tokenization.py builds them from tokenizer.model)"})

    def __post_init__(self):
        if self.template is None:
            self.template = chat.default_template(self.model_name_or_path)
        if self.template not in chat.TEMPLATES:
            fail(f"--template {self.template} is unknown: use one of {', '.join(chat.TEMPLATES)}.")
        if self.truncation not in ("middle", "drop"):
            fail(f"--truncation {self.truncation} is unknown: use middle or drop.")
        if self.max_length < 64:
            fail(f"--max_length {self.max_length} is too small: use at least 64 tokens.")
        self.datanum_count = parse_datanum(self.datanum)
        if self.output_dir is None:
            self.output_dir = str(Path("data") / Path(self.model_name_or_path).name / self.datanum)


def parse_datanum(value: str) -> int | None:
    """'0k' -> 0, '5k' -> 5000, '250' -> 250, 'all' -> None (every long sample)."""
    v = value.strip().lower()
    if v == "all":
        return None
    try:
        n = int(float(v[:-1]) * 1000) if v.endswith("k") else int(v)
    except ValueError:
        n = -1
    if n < 0:
        fail(f"--datanum {value} is not a count: use 0k, 5k, 10k, a number such as 2500, or all.")
    return n


# ---------------------------------------------------------------------------------------------
# Reading a line: bytes -> messages, or the reason it is skipped. Every repair is named and counted.

BOM = b"\xef\xbb\xbf"
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
LOSSLESS_REPAIRS = {"bom", "crlf", "sharegpt_format"}  # --strict accepts these; anything else stops it


def is_blank(text: str) -> bool:
    return not text.translate(ZERO_WIDTH).strip()


def parse_line(raw: bytes) -> tuple[list | None, str | None, list[str]]:
    """(messages, None, repairs) for a usable line, (None, reason, repairs) for a skipped one."""
    repairs = []
    if raw.endswith(b"\r"):
        raw, _ = raw[:-1], repairs.append("crlf")
    if raw.startswith(BOM):
        raw, _ = raw[len(BOM):], repairs.append("bom")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")  # keep the sample, bad bytes become U+FFFD
        repairs.append("invalid_utf8")
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None, "invalid_json", repairs
    if not isinstance(record, dict):
        return None, "not_an_object", repairs
    if "messages" in record:
        messages = record["messages"]
    elif isinstance(record.get("conversations"), list):
        messages = chat.sharegpt_to_messages(record["conversations"])
        repairs.append("sharegpt_format")
    else:
        return None, "missing_messages", repairs
    reason = chat.check_messages(messages, need_answer=False) if isinstance(messages, list) else None
    if reason in ("no_final_user_turn", None) and isinstance(messages, list):
        if messages[0]["role"] == "system" and is_blank(messages[0]["content"]):
            messages = messages[1:]
            repairs.append("empty_system_turn_dropped")
        if messages and messages[-1]["role"] == "user" and len(messages) > 2:
            messages = messages[:-1]  # a question nobody answered: the rounds before it are kept
            repairs.append("unanswered_last_turn_dropped")
    reason = chat.check_messages(messages)
    if reason is None:
        for m in messages:
            if is_blank(m["content"]):
                reason = "empty_answer" if m["role"] == "assistant" else "empty_user_turn"
                break
    return (None if reason else messages), reason, repairs


def scan(path: Path, source: str, strict: bool, stats: dict) -> list[tuple[int, int]]:
    """Pass 1 over a file: check every line, count it, return (offset, size) of the usable ones."""
    usable, offset, bad = [], 0, None
    with open(path, "rb") as f, tqdm(desc=f"scan {source}", unit=" lines", mininterval=2) as bar:
        for lineno, raw in enumerate(f, start=1):
            bar.update()
            size = len(raw)
            body = raw.rstrip(b"\n")
            if body.strip() and body != BOM:
                stats["lines_read"] += 1
                _, reason, repairs = parse_line(body)
                lossy = [r for r in repairs if r not in LOSSLESS_REPAIRS]
                if strict and (reason or lossy):
                    bad = (lineno, reason or lossy[0])
                    break
                stats["repaired"].update(repairs)
                if reason:
                    stats["skipped"][reason] += 1
                else:
                    usable.append((offset, size))
            offset += size
    if bad:  # after the progress bar has closed, so this sentence is the last line printed
        fail(f"{path}:{bad[0]}: {bad[1]} (--strict stops at the first bad line; fix the line, or run without "
             f"--strict to repair or skip it and count it in meta.json).")
    return usable


# ---------------------------------------------------------------------------------------------
# Tokenizing a batch (runs in the worker processes). Bounding and truncation work on pieces
# (longalign/chat.py): context pieces (format text + user turns) and answer pieces, never cutting answers.

_worker: dict = {}


def init_worker(tokenizer_path: str, trust_remote_code: bool, settings: dict) -> None:
    tok = tokenization.load_tokenizer(tokenizer_path, trust_remote_code=trust_remote_code)
    _worker.update(settings, tokenizer=tok)


def single_threaded() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the Rust tokenizer at every batch call


def cut_chars(pieces: list[tuple[str, bool]], max_chars: int) -> list[tuple[str, bool]] | None:
    """Middle-cut the longest context piece by characters so the sample has at most max_chars; None if
    the rest alone is longer. Bounds the tokenizer's work on a huge line."""
    total = sum(len(t) for t, _ in pieces)
    if total <= max_chars:
        return pieces
    i = max((k for k, (_, answer) in enumerate(pieces) if not answer), key=lambda k: len(pieces[k][0]))
    keep = len(pieces[i][0]) - (total - max_chars)
    if keep < 64:
        return None
    return pieces[:i] + [(chat.middle_cut(pieces[i][0], keep), False)] + pieces[i + 1:]


def cut_tokens(piece_ids: list[list[int]], is_answer: list[bool], max_length: int,
               min_keep: int = 32) -> list[list[int]] | None:
    """Middle-cut the longest context piece so the sample has at most max_length tokens, keeping at least
    min_keep of that piece (its format text and the question at its end); None if that is not enough."""
    total = sum(map(len, piece_ids))
    i = max((k for k, a in enumerate(is_answer) if not a), key=lambda k: len(piece_ids[k]))
    keep = len(piece_ids[i]) - (total - max_length)
    if keep < min_keep:
        return None
    return piece_ids[:i] + [chat.middle_cut(piece_ids[i], keep)] + piece_ids[i + 1:]


def bound(piece_ids: list[list[int]], is_answer: list[bool], max_length: int, middle: bool):
    """(piece ids of at most max_length tokens, truncated) or (None, True) when that is impossible."""
    if sum(map(len, piece_ids)) <= max_length:
        return piece_ids, False
    return (cut_tokens(piece_ids, is_answer, max_length) if middle else None), True


def tokenize_batch(job: tuple[str, list[tuple[int, int]]]) -> list[tuple]:
    """[(offset, size)] of lines of one file -> per line ("ok", [(ids, mask)] one per training sequence,
    truncated) or ("skip", reason). A line is one sequence, or one per answer under a chat template that
    renders an answer differently once a later turn follows (longalign/chat.py `conversation_rows`); its
    sequences are kept or skipped together."""
    path, spans = job
    w = _worker
    middle = w["truncation"] == "middle"
    too_long = ("skip", "too_long_answers" if middle else "too_long")
    max_chars = int(w["max_length"] * w["max_chars_per_token"])
    results, batch, rows_of = [], [], []
    with open(path, "rb") as f:
        for offset, size in spans:
            f.seek(offset)
            messages, reason, _ = parse_line(f.read(size).rstrip(b"\n"))
            if reason is not None:
                raise RuntimeError(f"{path} changed while it was read (offset {offset})")
            try:
                rows = chat.conversation_rows(messages, w["template"], w["tokenizer"])
            except (ValueError, TemplateError):  # a chat template that refuses this conversation
                results.append(("skip", "chat_template_error"))
                continue
            if middle:
                bounded = [cut_chars(pieces, max_chars) for pieces in rows]
            else:
                bounded = [p if sum(len(t) for t, _ in p) <= max_chars else None for p in rows]
            if any(p is None for p in bounded):
                results.append(too_long)
                continue
            results.append(None)
            batch += bounded
            rows_of.append([p is not q for p, q in zip(bounded, rows, strict=True)])  # cut by characters
    encoded = iter(chat.encode_pieces(batch, w["template"], w["tokenizer"], prefix=w["prefix"]))
    chars_cut = iter(rows_of)
    for k, result in enumerate(results):
        if result is not None:
            continue
        out, truncated = [], False
        for cut_by_chars in next(chars_cut):
            piece_ids, is_answer = next(encoded)
            piece_ids, cut = bound(piece_ids, is_answer, w["max_length"], middle)
            truncated |= cut or cut_by_chars
            if piece_ids is None:
                out.append(None)
                continue
            ids = np.fromiter(itertools.chain.from_iterable(piece_ids), dtype=np.int64)     # (l,)
            mask = np.repeat(np.array(is_answer, dtype=bool), [len(p) for p in piece_ids])  # (l,)
            out.append((ids, mask))
        results[k] = too_long if any(o is None for o in out) else ("ok", out, truncated)
    return results


# ---------------------------------------------------------------------------------------------
# Main: scan both files, choose the long samples, tokenize in batches, write the store and meta.json.

def load_tokenizer(args: Args):
    """(what to record as the tokenizer in meta.json, the tokenizer): longalign.tokenization.load_tokenizer,
    so ChatGLM3 checkpoints need no remote code and every failure is one sentence."""
    path = chat.MODEL_ALIASES.get(args.model_name_or_path, args.model_name_or_path)
    try:
        tok = tokenization.load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    except UserError as e:
        fail(f"--model_name_or_path {e}")
    if args.template == "chat_template" and not getattr(tok, "chat_template", None):
        fail(f"--model_name_or_path {args.model_name_or_path}: the tokenizer has no chat template; pass --template chatglm or llama.")
    if args.template == "chat_template":  # a template that cannot train any conversation: say so once, here
        try:
            chat.conversation_rows([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                   args.template, tok)
        except (ValueError, TemplateError) as e:
            fail(f"--model_name_or_path {args.model_name_or_path}: {e}.")
    if tok.eos_token_id is None:
        fail(f"--model_name_or_path {args.model_name_or_path}: the tokenizer has no EOS token, which ends every answer; pick another.")
    return path, tok


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    tokenizer_path, tok = load_tokenizer(args)
    files = {"long": args.long_file, "short": args.short_file}
    if args.datanum_count == 0:
        files.pop("long")  # 0k: the long file is not read at all
    if not args.short_file:
        files.pop("short")
    for source, name in files.items():
        if not Path(name).is_file():
            fail(f"--{source}_file {name} does not exist: download it (scripts/download_data.py) or pass the path.")

    # Pass 1: check and count every line, remember where the usable ones are.
    stats = {s: {"file": str(files[s]), "lines_read": 0, "skipped": Counter(), "repaired": Counter()}
             for s in files}
    samples = []  # (source, offset, size)
    for source, name in files.items():
        usable = scan(Path(name), source, args.strict, stats[source])
        if source == "long" and args.datanum_count is not None:
            rng = random.Random(args.seed)
            chosen = sorted(rng.sample(range(len(usable)), min(args.datanum_count, len(usable))))
            stats[source]["skipped"]["beyond_datanum"] += len(usable) - len(chosen)
            usable = [usable[i] for i in chosen]
        samples += [(source, off, size) for off, size in usable]
    random.Random(args.seed + 1).shuffle(samples)  # the store's order: long and short mixed

    # Pass 2: tokenize in batches (each from one file), in the shuffled order, and write.
    jobs, origin = [], []
    for start in range(0, len(samples), args.batch_size):
        chunk = samples[start:start + args.batch_size]
        for source in files:
            spans = [(off, size) for s, off, size in chunk if s == source]
            if spans:
                jobs.append((files[source], spans))
                origin.append(source)
    settings = {k: getattr(args, k) for k in ("template", "max_length", "truncation", "max_chars_per_token")}
    settings["prefix"] = chat.special_prefix(tok) if args.template != "chat_template" else []
    init = (args.model_name_or_path, args.trust_remote_code, settings)
    for stale in (packing.SORT_PLAN, packing.PACK_PLAN, "stats.json"):  # plans of an older store here
        (Path(args.output_dir) / stale).unlink(missing_ok=True)
    writer = StoreWriter(args.output_dir, len(tok))
    for source in files:
        stats[source].update(kept=0, truncated=0, sequences=0, split=0, num_tokens=0, num_target_tokens=0)
    _worker.update(settings, tokenizer=tok)
    if args.num_proc > 1:
        # fork: the workers inherit the loaded tokenizer and run it single-threaded (the Rust thread pool
        # does not survive a fork: a worker that used it would hang); where there is no fork, spawned
        # workers load the tokenizer themselves
        fork = "fork" in multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        pool = ctx.Pool(args.num_proc, initializer=single_threaded if fork else init_worker,
                        initargs=() if fork else init)
        results = pool.imap(tokenize_batch, jobs)
    else:
        pool = None
        results = map(tokenize_batch, jobs)
    with tqdm(total=len(samples), desc="tokenize", unit=" samples") as bar:
        for source, batch in zip(origin, results, strict=True):
            st = stats[source]
            for result in batch:
                if result[0] == "skip":
                    st["skipped"][result[1]] += 1
                    continue
                _, rows, truncated = result
                for ids, mask in rows:
                    writer.add(ids, mask)
                    st["num_tokens"] += len(ids)
                    st["num_target_tokens"] += int(mask.sum())
                st["kept"] += 1
                st["truncated"] += int(truncated)
                st["sequences"] += len(rows)
                st["split"] += int(len(rows) > 1)
            bar.update(len(batch))
    if pool is not None:
        pool.close()
        pool.join()

    # meta.json: settings and the accounting of every line read.
    totals = {k: sum(st[k] for st in stats.values()) for k in ("lines_read", "kept", "truncated", "split")}
    skipped = sum((st["skipped"] for st in stats.values()), Counter())
    repaired = sum((st["repaired"] for st in stats.values()), Counter())
    assert totals["kept"] + sum(skipped.values()) == totals["lines_read"], "a line went unaccounted"
    meta = writer.close({
        "created_by": "pre_tokenize.py", "tokenizer": tokenizer_path, "template": args.template,
        "max_length": args.max_length, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        "special_prefix": settings["prefix"],
        "seed": args.seed, "datanum": args.datanum, "order": "long and short shuffled with seed + 1",
        **totals, "skipped": dict(sorted(skipped.items())), "repaired": dict(sorted(repaired.items())),
        "sources": {s: {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in st.items()}
                    for s, st in stats.items()},
        "args": asdict(args),
    })
    split = f", {meta['split']} of them one sequence per answer ({meta['num_sequences']} sequences)" if meta["split"] else ""
    print(f"pre_tokenize: read {meta['lines_read']} lines, kept {meta['kept']} "
          f"({meta['truncated']} truncated{split}), skipped {sum(skipped.values())} {dict(skipped)}; "
          f"{meta['num_tokens']:,} tokens ({meta['num_target_tokens']:,} targets) -> {args.output_dir}")
    return meta


if __name__ == "__main__":
    main()
