"""Ulysses sequence parallelism on families without a model file of ours (longalign/any_model.py +
longalign/sequence_parallel.py): two processes (gloo, fp32) each holding half of a packed row of a tiny Qwen3 and a
tiny Gemma-3 (sliding layers whose window the longest sequence exceeds) give the loss and the gradients of one
process over the full row. Control: the same slices without the all-to-all must differ."""

import copy
import json
import os

import pytest
import torch
from test_any_model import FAMILIES, tiny, wrapped_twin
from test_sequence_parallel import free_port

from longalign import IGNORE_INDEX
from longalign.sequence_parallel import shard_batch

pytest.importorskip("deepspeed")
LENGTHS = (7, 12, 10)  # 29 tokens: the slices need one padding token; windows of 6


def packed_row() -> dict:
    g = torch.Generator().manual_seed(1)
    T = sum(LENGTHS)
    ids = torch.randint(1, 96, (1, T), generator=g)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    labels = torch.where(torch.rand(1, T, generator=g) < 0.7, ids, IGNORE_INDEX)
    labels[0, cu[:-1].long()] = IGNORE_INDEX
    weights = torch.where(labels != IGNORE_INDEX, torch.rand(1, T, generator=g) + 0.1, 0.0)
    return {"input_ids": ids, "labels": labels, "loss_weights": weights, "cu_seqlens": cu}


def worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    from longalign import sequence_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results, row = {}, packed_row()
    for family in ("qwen3", "gemma3_text"):
        model = wrapped_twin(tiny(family, **FAMILIES[family])).train()
        sp_model = copy.deepcopy(model)
        loss = model(**row).loss                                                # one process, full row
        loss.backward()
        shard = shard_batch(row, rank, world, pad_token_id=0)
        sequence_parallel.enable(sp_model, world, batch_size=1)
        sp_loss = sp_model(**shard).loss                                        # this rank's slice
        sp_loss.backward()
        total = sp_loss.detach().clone()
        dist.all_reduce(total)
        grads = torch.cat([p.grad.flatten() for p in sp_model.parameters()])
        dist.all_reduce(grads)
        ref = torch.cat([p.grad.flatten() for p in model.parameters()])
        sequence_parallel.disable(sp_model)                                     # control: no all-to-all
        with torch.no_grad():
            control = sp_model(**{k: v for k, v in shard.items() if k != "row_cu_seqlens"}).loss
        dist.all_reduce(control)
        results[family] = {"loss": abs(float(total) - float(loss)) / float(loss),
                           "grads": float((grads - ref).norm() / ref.norm()),
                           "control": abs(float(control) - float(loss)) / float(loss)}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def test_sp2_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "results.json"
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    for family, r in json.loads(out.read_text()).items():
        print(f"\nPARITY SP 2 vs 1 process, {family} packed row: loss rel {r['loss']:.1e}, summed grads rel "
              f"{r['grads']:.1e}; control without the all-to-all {r['control']:.1e}")
        assert r["loss"] <= 1e-6 and r["grads"] <= 1e-5 and r["control"] > 1e-4, (family, r)
