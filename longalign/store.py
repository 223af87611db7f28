"""The tokenized store: a folder of ragged, memory-mapped token ids and target bits.

Written by pre_tokenize.py (`StoreWriter`), read by sort_and_group.py and train.py (`TokenizedStore`).

    <dir>/meta.json        tokenizer, template, max_length, eos/pad ids, seed, datanum, accounting, dtype
    <dir>/input_ids.bin    all sequences back to back, uint16 if the vocab fits (< 65,536) else uint32
    <dir>/targets.bin      one bit per token (np.packbits over the same stream, big-endian bit order):
                           1 where the token is a target (an answer token or the EOS ending an answer)
    <dir>/lengths.npy      uint32 (n,)  tokens per sequence
    <dir>/num_targets.npy  uint32 (n,)  N_i = target tokens per sequence

A sequence of length l at offset o (the cumulative sum of lengths) occupies input_ids[o:o+l] and bits
o..o+l-1 of targets.bin. With uint16 ids that is 2 + 1/8 bytes per token plus 8 bytes per sequence;
no padding is stored (the original stored every sample padded to 65,536 int64 tokens).
"""

import json
import os
from pathlib import Path

import numpy as np

from longalign.chat import IGNORE_INDEX

STORE_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class StoreWriter:
    """Append sequences one at a time (in the order they will be numbered), then `close(meta)`.

    Target bits are packed on the fly: bits that do not yet fill a byte wait in `_pending`.
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dtype = token_dtype(vocab_size)
        self.vocab_size = vocab_size
        self._ids = open(self.path / "input_ids.bin", "wb")
        self._bits = open(self.path / "targets.bin", "wb")
        self._pending = np.zeros(0, dtype=bool)
        self.lengths: list[int] = []
        self.num_targets: list[int] = []

    def add(self, input_ids, target_mask) -> None:
        """input_ids: ints (l,); target_mask: bools (l,), True where the token is a target."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(target_mask, dtype=bool)
        if ids.ndim != 1 or ids.shape != mask.shape or len(ids) == 0:
            raise ValueError(f"a sequence needs equal, non-empty ids and mask, got {ids.shape} and {mask.shape}")
        if mask[0]:
            raise ValueError("the first token of a sequence cannot be a target (nothing precedes it)")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        self._ids.write(ids.astype(self.dtype).tobytes())
        bits = np.concatenate([self._pending, mask])
        whole = len(bits) // 8 * 8
        self._bits.write(np.packbits(bits[:whole]).tobytes())
        self._pending = bits[whole:]
        self.lengths.append(len(ids))
        self.num_targets.append(int(mask.sum()))

    def close(self, meta: dict) -> dict:
        """Flush, write lengths and meta.json (meta plus the store's own fields); return the full meta."""
        self._bits.write(np.packbits(self._pending).tobytes())  # the last byte, zero-padded
        self._ids.close()
        self._bits.close()
        np.save(self.path / "lengths.npy", np.asarray(self.lengths, dtype=np.uint32))
        np.save(self.path / "num_targets.npy", np.asarray(self.num_targets, dtype=np.uint32))
        meta = dict(meta, store_version=STORE_VERSION, dtype=self.dtype.name, vocab_size=self.vocab_size,
                    num_sequences=len(self.lengths), num_tokens=int(sum(self.lengths)),
                    num_target_tokens=int(sum(self.num_targets)))
        write_json(self.path / "meta.json", meta)
        return meta


def write_json(path: Path, obj: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file


def _memmap(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class TokenizedStore:
    """Read a store folder: `len(store)`, `store[i] -> {"input_ids", "labels"}` (int64, labels unshifted,
    IGNORE_INDEX off targets), `store.lengths`, `store.num_target_tokens`, `store.meta`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} does not exist: run pre_tokenize.py with --output_dir {self.path}")
        self.meta: dict = json.loads(meta_file.read_text(encoding="utf-8"))
        if self.meta.get("store_version") != STORE_VERSION:
            raise ValueError(f"{meta_file} is not a version-{STORE_VERSION} store: re-run pre_tokenize.py")
        self.lengths = np.load(self.path / "lengths.npy").astype(np.int64)              # (n,)
        self.num_target_tokens = np.load(self.path / "num_targets.npy").astype(np.int64)  # (n,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)  # (n+1,)
        self._ids = _memmap(self.path / "input_ids.bin", np.dtype(self.meta["dtype"]))
        self._bits = _memmap(self.path / "targets.bin", np.uint8)
        if len(self._ids) != self.offsets[-1]:
            raise ValueError(f"{self.path}: input_ids.bin holds {len(self._ids)} tokens but lengths.npy "
                             f"sums to {self.offsets[-1]}: the store is incomplete, re-run pre_tokenize.py")

    def __len__(self) -> int:
        return len(self.lengths)

    def target_mask(self, i: int) -> np.ndarray:
        """bool (l,): True where token t of sequence i is a target."""
        start, end = self.offsets[i], self.offsets[i + 1]
        first = start // 8
        bits = np.unpackbits(self._bits[first:(end + 7) // 8])
        return bits[start - 8 * first:end - 8 * first].astype(bool)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for a store of {len(self)}")
        i = i % len(self)
        input_ids = np.asarray(self._ids[self.offsets[i]:self.offsets[i + 1]], dtype=np.int64)  # (l,)
        labels = np.where(self.target_mask(i), input_ids, IGNORE_INDEX)                        # (l,)
        return {"input_ids": input_ids, "labels": labels}

    def disk_bytes(self) -> int:
        """Bytes of everything in the folder except json files (the store plus any plans in it)."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file() and f.suffix != ".json")
