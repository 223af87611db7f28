"""Tokenized store: what is read back equals what was written, in uint16 and uint32, at <= 2.5 B/token."""

import numpy as np
import pytest

from longalign.chat import IGNORE_INDEX
from longalign.store import StoreWriter, TokenizedStore


def random_sequences(rng, n, vocab):
    out = []
    for _ in range(n):
        length = int(rng.integers(1, 300))
        ids = rng.integers(0, vocab, length)
        mask = rng.random(length) < 0.3
        mask[0] = False
        out.append((ids, mask))
    return out


@pytest.mark.parametrize("vocab", [1024, 65536, 151_000])
def test_round_trip(tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    seqs = random_sequences(rng, 57, vocab)  # 57 sequences of odd lengths: bits cross byte boundaries
    w = StoreWriter(tmp_path, vocab)
    for ids, mask in seqs:
        w.add(ids, mask)
    meta = w.close({"template": "llama"})
    store = TokenizedStore(tmp_path)
    assert len(store) == 57 and store.meta["template"] == "llama"
    assert store.meta["dtype"] == ("uint16" if vocab <= 65536 else "uint32")
    assert meta["num_tokens"] == sum(len(ids) for ids, _ in seqs)
    assert store.lengths.dtype == np.int64 and store.num_target_tokens.dtype == np.int64
    for i, (ids, mask) in enumerate(seqs):
        item = store[i]
        assert item["input_ids"].dtype == np.int64 and item["labels"].dtype == np.int64
        np.testing.assert_array_equal(item["input_ids"], ids)
        np.testing.assert_array_equal(item["labels"], np.where(mask, ids, IGNORE_INDEX))
        assert store.lengths[i] == len(ids) and store.num_target_tokens[i] == mask.sum()
    np.testing.assert_array_equal(store[-1]["input_ids"], seqs[-1][0])
    bytes_per_token = store.disk_bytes() / meta["num_tokens"]
    assert bytes_per_token <= (2.5 if vocab <= 65536 else 4.5)


def test_empty_store_and_errors(tmp_path):
    w = StoreWriter(tmp_path / "empty", 100)
    w.close({})
    assert len(TokenizedStore(tmp_path / "empty")) == 0
    w = StoreWriter(tmp_path / "bad", 100)
    with pytest.raises(ValueError, match="first token"):
        w.add([1, 2], [True, False])
    with pytest.raises(ValueError, match="out of range"):
        w.add([1, 100], [False, True])
    with pytest.raises(FileNotFoundError, match="pre_tokenize"):
        TokenizedStore(tmp_path / "nowhere")
    with pytest.raises(IndexError):
        TokenizedStore(tmp_path / "empty")[0]


def test_truncated_store_is_refused(tmp_path):
    w = StoreWriter(tmp_path, 100)
    w.add([1, 2, 3], [False, True, True])
    w.close({})
    with open(tmp_path / "input_ids.bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(ValueError, match="incomplete"):
        TokenizedStore(tmp_path)
