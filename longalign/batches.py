"""From a Schedule to tensors: the sampler the Trainer draws from, the dataset that reads the store,
and the collator that pads (naive, sort) or concatenates (pack) a device's units into one batch.

Used by train.py and bench/bench_batching.py.

A pack is one row; its sequences sit back to back and `cu_seqlens` marks where each starts:

    tokens      | a0 a1 a2 a3 | b0 b1 b2 | c0 c1 c2 c3 c4 |
    cu_seqlens  [0,            4,         7,              12]     int32 (n+1,)
    positions   | 0  1  2  3  | 0  1  2  | 0  1  2  3  4  |        (the model resets them per sequence)
    labels      |-100 .. a2 a3|-100 .. b2|-100 c1 ..    c4|        unshifted; first token never a target
    loss_weights| 0  0  w_a w_a| 0 0 w_b | 0  w_c  ..  w_c|        Schedule's coefficient on each target

Nothing pads a pack: the model attends block-diagonally inside the row.
"""

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from longalign import IGNORE_INDEX
from longalign.schedule import Schedule, Slot


class ScheduleSampler(Sampler):
    """Yields the epoch's Slots in schedule order; the Trainer batches them by B and deals the batches
    round-robin to ranks, which is the schedule's rank-major order. `set_epoch` (called by the Trainer
    each epoch, also after a resume) selects the epoch, so the order is a function of (seed, epoch)."""

    def __init__(self, schedule: Schedule):
        self.schedule, self.epoch = schedule, 0
        self._cache: tuple[int, list[Slot]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def slots(self) -> list[Slot]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.schedule.slots(self.epoch))
        return self._cache[1]

    def __iter__(self):
        return iter(self.slots())

    def __len__(self) -> int:
        return len(self.schedule)


class SlotDataset(Dataset):
    """dataset[slot] -> the unit's tokens with their loss weights. Indexed by the Slot itself (the
    sampler's output), so everything a unit needs travels with it, also into DataLoader workers."""

    def __init__(self, store, sampler: ScheduleSampler):
        self.store, self.sampler = store, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        # accelerate calls this instead of the sampler's when a resume wraps the batch sampler
        self.sampler.set_epoch(epoch)

    def __getitem__(self, slot: Slot) -> dict[str, np.ndarray]:
        ids, labels, weights = [], [], []
        for i, coef in zip(slot.seq_ids, slot.coefs, strict=True):
            item = self.store[i]
            ids.append(item["input_ids"])
            labels.append(item["labels"])
            weights.append(np.where(item["labels"] != IGNORE_INDEX, coef, 0.0).astype(np.float32))
        return {"input_ids": np.concatenate(ids), "labels": np.concatenate(labels),
                "loss_weights": np.concatenate(weights),
                "seq_lengths": np.asarray([len(x) for x in ids], dtype=np.int64)}


class Collator:
    """pack: all features of the batch into ONE row with cu_seqlens; naive/sort: one row per feature,
    right-padded to the longest (pad id, label IGNORE_INDEX, weight 0, attention_mask 0)."""

    def __init__(self, pack: bool, pad_token_id: int):
        self.pack, self.pad_token_id = pack, pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.pack:
            lengths = np.concatenate([f["seq_lengths"] for f in features])
            cu_seqlens = np.concatenate([[0], np.cumsum(lengths)])                         # (n+1,)
            return {
                "input_ids": torch.from_numpy(np.concatenate([f["input_ids"] for f in features]))[None],    # (1, T)
                "labels": torch.from_numpy(np.concatenate([f["labels"] for f in features]))[None],          # (1, T)
                "loss_weights": torch.from_numpy(np.concatenate([f["loss_weights"] for f in features]))[None],
                "cu_seqlens": torch.from_numpy(cu_seqlens.astype(np.int32)),
            }
        T = max(len(f["input_ids"]) for f in features)
        B = len(features)
        batch = {
            "input_ids": torch.full((B, T), self.pad_token_id, dtype=torch.long),  # (B, T)
            "labels": torch.full((B, T), IGNORE_INDEX, dtype=torch.long),
            "loss_weights": torch.zeros((B, T), dtype=torch.float32),
            "attention_mask": torch.zeros((B, T), dtype=torch.long),
        }
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][b, :n] = torch.from_numpy(f["input_ids"])
            batch["labels"][b, :n] = torch.from_numpy(f["labels"])
            batch["loss_weights"][b, :n] = torch.from_numpy(f["loss_weights"])
            batch["attention_mask"][b, :n] = 1
        if B == 1:
            del batch["attention_mask"]  # nothing padded
        return batch
