"""pre_tokenize.py: labels decode back to the answers, hostile lines are repaired or skipped and counted,
--strict names the line, --datanum is honoured, middle truncation keeps every answer, runs are deterministic."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pre_tokenize
from longalign import chat
from longalign.chat import IGNORE_INDEX
from longalign.store import TokenizedStore

ROOT = Path(__file__).resolve().parents[1]


def good(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i} about the glen?"},
                         {"role": "assistant", "content": f"Answer {i}: the glen is wide."}]}


def line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def msgs(*turns) -> bytes:
    return line({"messages": [{"role": r, "content": c} for r, c in turns]})


# (bytes of one line, reason it is skipped or None if kept, repair expected)
HOSTILE = [
    (b'{"messages": [{"role": "user", "content": "cut', "invalid_json", None),
    (b"\xef\xbb\xbf" + line(good(100)), None, "bom"),
    (line(good(101))[:-1] + b"\r\n", None, "crlf"),
    (b'{"messages": [{"role": "user", "content": "bad \xff\xfe bytes"}, '
     b'{"role": "assistant", "content": "kept"}]}\n', None, "invalid_utf8"),
    (b"[1, 2, 3]\n", "not_an_object", None),
    (b'"just a string"\n', "not_an_object", None),
    (b'{"text": "no messages here"}\n', "missing_messages", None),
    (b'{"messages": "hello"}\n', "messages_not_a_list", None),
    (b'{"messages": []}\n', "empty_messages", None),
    (b'{"messages": ["hello", "world"]}\n', "turn_not_an_object", None),
    (msgs(("assistant", "a"), ("user", "q")), "roles_out_of_order", None),
    (msgs(("user", "q"), ("user", "q2"), ("assistant", "a")), "roles_out_of_order", None),
    (msgs(("user", "q"), ("robot", "beep")), "unknown_role", None),
    (line({"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}),
     "content_not_a_string", None),
    (line({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}),
     "content_not_a_string", None),
    (msgs(("user", "q"), ("assistant", "   ")), "empty_answer", None),
    (msgs(("user", "q"), ("assistant", "\u200b\u200d\ufeff")), "empty_answer", None),
    (msgs(("user", "\u200b\u200b"), ("assistant", "a")), "empty_user_turn", None),
    (msgs(("system", ""), ("user", "Hi there?"), ("assistant", "Hello there.")), None, "empty_system_turn_dropped"),
    (msgs(("user", "q1?"), ("assistant", "a1."), ("user", "never answered")), None, "unanswered_last_turn_dropped"),
    (msgs(("user", "only a question")), "no_final_answer", None),
    (line({"conversations": [{"from": "human", "value": "Share it?"}, {"from": "gpt", "value": "Shared."}]}),
     None, "sharegpt_format"),
    (line({"conversations": [{"from": "human", "value": "q"}, {"from": "alien", "value": "a"}]}),
     "unknown_role", "sharegpt_format"),
    # 20 MB: a huge document before a question is cut in the middle; a huge answer cannot be cut
    (msgs(("user", "Doc start. " + "lorem ipsum " * 1_700_000 + "What is the end?"), ("assistant", "The end.")),
     None, None),
    (msgs(("user", "q"), ("assistant", "word " * 4_000_000)), "too_long_answers", None),
]


def write_hostile(path: Path) -> list[tuple]:
    with open(path, "wb") as f:
        for i, (raw, _, _) in enumerate(HOSTILE):
            f.write(line(good(i)))
            f.write(b"\n   \n")  # blank lines are not lines of data
            f.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return HOSTILE


def run(tmp_path, tokenizer_dir, long_file, short_file="", *extra) -> dict:
    out = tmp_path / "out"
    return pre_tokenize.main(["--model", str(tokenizer_dir), "--long_file", str(long_file), "--short_file",
                              str(short_file), "--out_dir", str(out), "--max_length", "2048", *extra])


def spans(item) -> list[np.ndarray]:
    is_target = item["labels"] != IGNORE_INDEX
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_target.astype(np.int8), [0]])))
    return [item["input_ids"][a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def test_hostile_file_is_accounted_for(tmp_path, tokenizer_dir, tokenizer):
    hostile = write_hostile(tmp_path / "hostile.jsonl")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "pre_tokenize.py", "--model", str(tokenizer_dir), "--long_file",
                           str(tmp_path / "hostile.jsonl"), "--short_file", "", "--datanum", "all",
                           "--out_dir", str(tmp_path / "out"), "--max_length", "2048", "--template", "llama"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and time.perf_counter() - t0 < 60
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    expected_skips = {}
    for _, reason, _ in hostile:
        if reason:
            expected_skips[reason] = expected_skips.get(reason, 0) + 1
    assert meta["lines_read"] == 2 * len(hostile)
    assert meta["skipped"] == expected_skips
    assert meta["kept"] + sum(meta["skipped"].values()) == meta["lines_read"]
    assert meta["kept"] == len(hostile) + sum(r is None for _, r, _ in hostile)
    for repair in {r for _, _, r in hostile if r}:
        assert meta["repaired"].get(repair, 0) >= 1, repair
    assert meta["truncated"] == 1
    store = TokenizedStore(tmp_path / "out")
    assert len(store) == meta["kept"] and store.lengths.max() <= 2048
    answers = [tokenizer.decode(s) for i in range(len(store)) for s in spans(store[i])]
    assert "Shared.</s>" in answers and "The end.</s>" in answers and "kept</s>" in answers
    huge = next(i for i in range(len(store)) if "Doc start." in tokenizer.decode(store[i]["input_ids"]))
    text = tokenizer.decode(store[huge]["input_ids"])
    assert store.lengths[huge] == 2048 and text.endswith("What is the end?[/INST]The end.</s>")


def test_strict_stops_at_the_first_bad_line(tmp_path, tokenizer_dir):
    write_hostile(tmp_path / "hostile.jsonl")
    proc = subprocess.run([sys.executable, "pre_tokenize.py", "--model", str(tokenizer_dir), "--long_file",
                           str(tmp_path / "hostile.jsonl"), "--short_file", "", "--datanum", "all",
                           "--out_dir", str(tmp_path / "out"), "--strict"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'hostile.jsonl'}:4: invalid_json"), last  # 1 good, 2-3 blank
    # a clean file passes --strict (a BOM, CRLF and ShareGPT form are lossless repairs)
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\xef\xbb\xbf" + line(good(0)) + line(good(1))[:-1] + b"\r\n" + HOSTILE[21][0])
    meta = run(tmp_path, tokenizer_dir, clean, "", "--datanum", "all", "--strict")
    assert meta["kept"] == 3


@pytest.mark.parametrize("template", ["chatglm", "chat_template"])
def test_store_round_trip_and_labels(tmp_path, tokenizer_dir, tokenizer, chat_data_dir, template):
    raw = chat_data_dir / "raw"
    meta = run(tmp_path, tokenizer_dir, raw / "long.jsonl", raw / "sharegpt.jsonl", "--datanum", "all",
               "--max_length", "65536", "--template", template)
    convs = [json.loads(x)["messages"] for f in ("long.jsonl", "sharegpt.jsonl")
             for x in (raw / f).read_text().splitlines()]
    reference = chat.encode_conversations(convs, template, tokenizer)
    store = TokenizedStore(tmp_path / "out")
    assert meta["truncated"] == 0 and len(store) == len(convs) == meta["kept"]
    got = sorted((tuple(store[i]["input_ids"]), tuple(store[i]["labels"])) for i in range(len(store)))
    assert got == sorted((tuple(ids), tuple(lab)) for ids, lab in reference)
    assert meta["num_tokens"] == sum(len(ids) for ids, _ in reference) == store.lengths.sum()
    assert meta["num_target_tokens"] == store.num_target_tokens.sum()
    answers = sorted(tokenizer.decode(s) for i in range(len(store)) for s in spans(store[i]))
    assert answers == sorted(m["content"] + "</s>" for c in convs for m in c if m["role"] == "assistant")
    assert store.disk_bytes() / meta["num_tokens"] <= 2.5


def test_datanum_is_honoured_and_seeded(tmp_path, tokenizer_dir, chat_data_dir, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # forked workers must not hang on the Rust pool
    raw = chat_data_dir / "raw"
    metas, stores = [], []
    for k, (seed, num_proc) in enumerate([(1, 1), (1, 2), (2, 1)]):
        out = tmp_path / f"d{k}"
        metas.append(pre_tokenize.main(["--model", str(tokenizer_dir), "--long_file", str(raw / "long.jsonl"),
                                        "--short_file", str(raw / "sharegpt.jsonl"), "--datanum", "10",
                                        "--seed", str(seed), "--out_dir", str(out), "--max_length", "4096",
                                        "--num_proc", str(num_proc), "--batch_size", "16"]))
        stores.append(out)
    long = metas[0]["sources"]["long"]
    assert long["kept"] + long["skipped"].get("too_long", 0) == 10 and long["skipped"]["beyond_datanum"] == 14
    assert metas[0]["sources"]["short"]["kept"] == 120
    for name in ("input_ids.bin", "targets.bin", "lengths.npy"):
        assert (stores[0] / name).read_bytes() == (stores[1] / name).read_bytes()  # same seed: same bytes,
                                                                                  # 1 or 2 workers
    assert (stores[0] / "input_ids.bin").read_bytes() != (stores[2] / "input_ids.bin").read_bytes()
    meta = pre_tokenize.main(["--model", str(tokenizer_dir), "--long_file", str(tmp_path / "absent.jsonl"),
                              "--short_file", str(raw / "sharegpt.jsonl"), "--datanum", "0k",
                              "--out_dir", str(tmp_path / "zero")])
    assert "long" not in meta["sources"] and meta["kept"] == 120


def test_drop_and_middle_truncation(tmp_path, tokenizer_dir, tokenizer, chat_data_dir):
    raw = chat_data_dir / "raw" / "long.jsonl"
    convs = [json.loads(x)["messages"] for x in raw.read_text().splitlines()]
    lengths = [len(ids) for ids, _ in chat.encode_conversations(convs, "llama", tokenizer)]
    limit = int(np.median(lengths))
    over = sum(n > limit for n in lengths)
    drop = run(tmp_path / "drop", tokenizer_dir, raw, "", "--datanum", "all", "--template", "llama",
               "--max_length", str(limit), "--truncation", "drop")
    assert drop["skipped"] == {"too_long": over} and drop["kept"] == len(convs) - over
    middle = run(tmp_path / "middle", tokenizer_dir, raw, "", "--datanum", "all", "--template", "llama",
                 "--max_length", str(limit), "--num_proc", "2", "--batch_size", "5")
    assert middle["kept"] == len(convs) and middle["truncated"] == over
    store = TokenizedStore(tmp_path / "middle" / "out")
    assert store.lengths.max() == limit
    for i in range(len(store)):
        text = tokenizer.decode(store[i]["input_ids"])
        conv = next(c for c in convs if c[1]["content"] + "</s>" in text)
        answers = [m["content"] + "</s>" for m in conv if m["role"] == "assistant"]
        assert [tokenizer.decode(s) for s in spans(store[i])] == answers
        question = conv[0]["content"].rsplit(". ", 1)[-1]  # "What is the secret code of X?"
        assert question + "[/INST]" in text


def test_user_errors_are_one_sentence(tmp_path, tokenizer_dir, capsys):
    for argv in (["--datanum", "lots"], ["--template", "vicuna"], ["--long_file", str(tmp_path / "none.jsonl")]):
        with pytest.raises(SystemExit) as e:
            pre_tokenize.main(["--model", str(tokenizer_dir), "--out_dir", str(tmp_path / "o"), *argv])
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) >= 1


def test_a_template_that_refuses_a_conversation_skips_it(tmp_path, tokenizer, chat_data_dir):
    """Some chat templates raise on a system turn: that conversation is skipped and counted, not fatal."""
    from tools.synthetic import CHAT_TEMPLATE

    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    tok = type(tokenizer).from_pretrained(tok_dir)
    tok.chat_template = strict + CHAT_TEMPLATE
    tok.save_pretrained(tok_dir)
    raw = chat_data_dir / "raw" / "sharegpt.jsonl"
    with_system = sum('"system"' in x for x in raw.read_text().splitlines())
    meta = run(tmp_path, tok_dir, raw, "", "--datanum", "all")
    assert with_system > 0 and meta["skipped"] == {"chat_template_error": with_system}
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain")
    with pytest.raises(SystemExit):
        run(tmp_path, tmp_path / "plain", raw, "", "--datanum", "all")
