"""scripts/download_data.py on local inputs (no network): ShareGPT cleaning and splitting, a local dataset
folder for the long data, and outputs that pre_tokenize.py reads without a single skip."""

import json
from pathlib import Path

import script_module

import pre_tokenize

ROOT = Path(__file__).resolve().parents[1]
download_data = script_module.load("scripts/download_data.py", "download_data")


def conv(*turns):
    return {"conversations": [{"from": f, "value": v} for f, v in turns]}


SHAREGPT = [
    conv(("human", "Hi?"), ("gpt", "Hello.")),                                        # kept
    conv(("system", "Be brief."), ("human", "Why?"), ("gpt", "Because.")),            # kept with system
    conv(("gpt", "...as I said."), ("human", "Go on?"), ("gpt", "Done.")),            # leading gpt removed
    conv(("human", "A?"), ("gpt", "B."), ("human", "C?")),                            # trailing human removed
    conv(("human", "A?"), ("alien", "B.")),                                           # unknown speaker
    conv(("human", "A?"), ("human", "again?"), ("gpt", "B.")),                        # same role twice
    conv(("human", None), ("gpt", "B.")),                                             # non-text turn
    conv(("gpt", "only me")),                                                         # nothing left
    {"id": "no conversations"},
    conv(("human", "x" * 50), ("gpt", "y" * 50), ("human", "z" * 50), ("gpt", "w" * 50)),  # split at 150
]


def test_sharegpt_cleaning_and_long_folder(tmp_path, tokenizer_dir, chat_data_dir):
    (tmp_path / "sharegpt.json").write_text(json.dumps(SHAREGPT), encoding="utf-8")
    long_dir = tmp_path / "longalign"
    long_dir.mkdir()
    (long_dir / "train.jsonl").write_text((chat_data_dir / "raw" / "long.jsonl").read_text())
    summary = download_data.main(["--long_data", str(long_dir), "--sharegpt", str(tmp_path / "sharegpt.json"),
                                  "--out_dir", str(tmp_path / "raw"), "--split_max_chars", "150"])
    sharegpt = [json.loads(x)["messages"] for x in (tmp_path / "raw" / "sharegpt.jsonl").read_text().splitlines()]
    assert sharegpt[0] == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    assert sharegpt[1][0] == {"role": "system", "content": "Be brief."}
    assert sharegpt[2][0]["content"] == "Go on?" and sharegpt[3][-1]["content"] == "B."
    assert [len(m) for m in sharegpt[4:]] == [2, 2] and len(sharegpt) == 6
    s = summary["sharegpt"]
    assert s["read"] == len(SHAREGPT) and s["written"] == 6 and s["split into parts"] == 1
    assert s["dropped: unknown speaker"] == 1 and s["dropped: roles_out_of_order"] == 1
    assert s["dropped: non-text turn"] == 1 and s["dropped: empty_messages"] == 1
    assert s["dropped: no conversations list"] == 1
    long = (tmp_path / "raw" / "long.jsonl").read_text().splitlines()
    original = (chat_data_dir / "raw" / "long.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in long] == [json.loads(x) for x in original]
    meta = pre_tokenize.main(["--model", str(tokenizer_dir), "--long_file", str(tmp_path / "raw" / "long.jsonl"),
                              "--short_file", str(tmp_path / "raw" / "sharegpt.jsonl"), "--datanum", "all",
                              "--out_dir", str(tmp_path / "tok"), "--strict"])
    assert meta["skipped"] == {} and meta["kept"] == len(long) + 6
