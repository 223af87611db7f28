"""Ulysses sequence parallelism (longalign/sequence_parallel.py) against one process over the full row.

Two processes (gloo, float64) split a plain row and a packed row of a tiny Llama (GQA: KV heads split; also
with activation checkpointing) and a tiny ChatGLM (one KV head: DeepSpeed replicates it): the loss summed over the
slices, each slice's logits and the gradients summed over the ranks equal one process's on the full row. Control:
the same slices without the all-to-all (each rank attends only inside its slice) must differ.
The same two processes give the backend table at SP 2 (tests/backend_table.py: each attention backend through the
test doubles, bf16 and fp32, activation checkpointing) and count the host syncs of an SP forward.
"""

import copy
import json
import os
import socket

import pytest
import torch

from longalign import IGNORE_INDEX
from longalign.attention import pack_segments, position_ids_from_cu_seqlens
from longalign.sequence_parallel import check_sizes, shard_batch

pytest.importorskip("deepspeed")

TOL = 1e-10        # float64 logits: the all-to-alls move numbers, the sums only change order
GRAD_TOL = 1e-6    # relative; the fused loss (longalign/loss.py) computes its softmax in fp32 whatever the dtype


def test_check_sizes_names_the_numbers():
    check_sizes(2, 4, 32, 2)
    check_sizes(8, 8, 32, 2)  # fewer KV heads than ranks: replicated
    with pytest.raises(ValueError, match="size 3 must divide the world size 8"):
        check_sizes(3, 8, 32, 2)
    with pytest.raises(ValueError, match="size 4 must divide the model's 6 attention heads"):
        check_sizes(4, 8, 6, 2)
    with pytest.raises(ValueError, match="size 4 and the model's 6 KV heads"):
        check_sizes(4, 4, 12, 6)


def test_shard_batch_shifts_on_the_full_row():
    # pack of two sequences (5 + 4 tokens) cut into 2 slices of 5 (one padding token)
    ids = torch.arange(10, 19)[None]
    labels = torch.tensor([[-100, 11, 12, -100, 14, -100, 16, 17, 18]])
    weights = torch.tensor([[0, 1, 2, 0, 4, 0, 6, 7, 8]], dtype=torch.float32)
    batch = {"input_ids": ids, "labels": labels, "loss_weights": weights,
             "cu_seqlens": torch.tensor([0, 5, 9], dtype=torch.int32)}
    r0, r1 = (shard_batch(batch, r, 2, pad_token_id=0) for r in (0, 1))
    # the last position of slice 0 predicts the first token of slice 1 (token 15: not a target)
    assert r0["shift_labels"].tolist() == [[11, 12, -100, 14, -100]]
    assert r1["shift_labels"].tolist() == [[16, 17, 18, -100, -100]]
    assert r0["shift_loss_weights"].tolist() == [[1, 2, 0, 4, 0]]
    assert r1["position_ids"].tolist() == [[0, 1, 2, 3, 0]]  # the padding tail is a segment of its own
    assert r1["input_ids"].tolist() == [[15, 16, 17, 18, 0]]
    # every rank gets the full row's boundaries (the padding tail a segment of its own)
    assert r0["row_cu_seqlens"].tolist() == r1["row_cu_seqlens"].tolist() == [0, 5, 9, 10]
    assert r0["row_cu_seqlens"].dtype == torch.int32


@pytest.mark.parametrize("B", [1, 2])
def test_schedule_gives_the_ranks_of_a_group_the_same_units(B):
    """W = 4 ranks, N = 2: K = W / N x B units per micro-step, the same units (in the same order) as a run of
    W / N ranks without SP; through accelerate's dealing, ranks 2g and 2g+1 get the same batches; the weights
    keep the factor W (4, not 2)."""
    import numpy as np
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    from longalign.batches import ScheduleSampler
    from longalign.schedule import Schedule

    rng = np.random.default_rng(0)
    lengths, targets = rng.integers(20, 400, 19), rng.integers(1, 20, 19)
    groups = [list(range(s, min(s + 2 * B, 19))) for s in range(0, 19, 2 * B)]
    common = dict(per_device=B, accumulation=2, seed=1, reduction="sequence", groups=groups)
    sp = Schedule("sort", targets, lengths, world_size=4, sequence_parallel=2, **common)
    dp = Schedule("sort", targets, lengths, world_size=2, **common)
    assert sp.K == dp.K == 2 * B and len(sp) == 2 * len(dp)
    dealt = [list(BatchSamplerShard(BatchSampler(ScheduleSampler(sp), B, drop_last=False), num_processes=4,
                                    process_index=r)) for r in range(4)]
    reference = [list(BatchSamplerShard(BatchSampler(ScheduleSampler(dp), B, drop_last=False), num_processes=2,
                                        process_index=g)) for g in range(2)]
    for r in range(4):
        assert [[s.seq_ids for s in b] for b in dealt[r]] == [[s.seq_ids for s in b] for b in reference[r // 2]]
        for got, ref in zip(dealt[r], reference[r // 2], strict=True):
            for a, b in zip(got, ref, strict=True):
                assert np.allclose(np.array(a.coefs), 2 * np.array(b.coefs))  # W = 4 vs 2


# ---------------------------------------------------------------------------------------------
# Two processes


def tiny_models() -> dict:
    from transformers import LlamaConfig

    from modeling_chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration
    from modeling_llama import LlamaForCausalLM

    llama = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    glm = ChatGLMConfig(num_layers=2, padded_vocab_size=96, hidden_size=32, ffn_hidden_size=48, kv_channels=8,
                        num_attention_heads=4, multi_query_attention=True, multi_query_group_num=1,
                        add_qkv_bias=True, seq_length=64)
    models = {}
    for name, cls, config in (("llama", LlamaForCausalLM, llama), ("chatglm", ChatGLMForConditionalGeneration, glm)):
        torch.manual_seed(0)
        model = cls(config).double()
        for p in model.parameters():  # random norms and biases too
            torch.nn.init.normal_(p, std=0.3 if p.ndim == 1 else 0.1)
        models[name] = model
    return models


def rows() -> dict:
    """A plain row and a packed row (3 sequences), 29 tokens each: the slices need one padding token."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, lengths in (("plain", [29]), ("packed", [7, 12, 10])):
        T = sum(lengths)
        ids = torch.randint(1, 96, (1, T), generator=g)
        labels = torch.where(torch.rand(1, T, generator=g) < 0.7, ids, IGNORE_INDEX)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        labels[0, cu[:-1].long()] = IGNORE_INDEX  # a sequence's first token is never a target
        weights = torch.where(labels != IGNORE_INDEX, torch.rand(1, T, generator=g, dtype=torch.float64), 0.0)
        row = {"input_ids": ids, "labels": labels, "loss_weights": weights}
        if len(lengths) > 1:
            row["cu_seqlens"] = cu
        out[name] = row
    # two right-padded rows (naive/sort with a per-device batch of 2): 29 and 18 real tokens
    ids = torch.randint(1, 96, (2, 29), generator=g)
    mask = (torch.arange(29)[None] < torch.tensor([[29], [18]])).long()
    labels = torch.where((torch.rand(2, 29, generator=g) < 0.7) & mask.bool(), ids, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    weights = torch.where(labels != IGNORE_INDEX, torch.rand(2, 29, generator=g, dtype=torch.float64), 0.0)
    out["two rows"] = {"input_ids": ids, "labels": labels, "loss_weights": weights, "attention_mask": mask}
    return out


def worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    from longalign import sequence_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    models = tiny_models()
    # activation checkpointing recomputes each layer, all-to-alls included, during backward
    models["llama+checkpointing"] = copy.deepcopy(models["llama"])
    for model_name, model in models.items():
        sp_model = copy.deepcopy(model)
        if model_name.endswith("checkpointing"):
            sp_model.activation_checkpointing_enable()
            sp_model.train()
        for row_name, row in rows().items():
            B, T = row["input_ids"].shape
            sequence_parallel.enable(sp_model, world, batch_size=B)
            # one process, full row
            model.zero_grad()
            ref = model(**row)
            ref.loss.backward()
            ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
            with torch.no_grad():
                ref_logits = model(input_ids=row["input_ids"], cu_seqlens=row.get("cu_seqlens"),
                                   attention_mask=row.get("attention_mask"), use_cache=False).logits
                # padding positions attend differently (nothing to compare): zero them on both sides
                real_tokens = row.get("attention_mask", torch.ones(B, T, dtype=torch.long))[..., None]
                ref_logits = ref_logits * real_tokens
            # this rank's slice
            shard = shard_batch(row, rank, world, pad_token_id=0)
            sp_model.zero_grad()
            loss = sp_model(**shard).loss
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            grads = {k: p.grad.clone() for k, p in sp_model.named_parameters()}
            for g in grads.values():
                dist.all_reduce(g)
            with torch.no_grad():
                logits = sp_model(input_ids=shard["input_ids"], position_ids=shard["position_ids"],
                                  row_cu_seqlens=shard.get("row_cu_seqlens"), use_cache=False).logits
            n = shard["input_ids"].shape[1]
            real = slice(rank * n, min((rank + 1) * n, T))
            logits = logits[:, : real.stop - real.start] * real_tokens[:, real]
            logit_diff = (logits - ref_logits[:, real]).abs().max()
            dist.all_reduce(logit_diff, op=dist.ReduceOp.MAX)
            # control: the same slices, each rank attending only inside its own
            sequence_parallel.disable(sp_model)
            with torch.no_grad():
                control = sp_model(**{k: v for k, v in shard.items() if k != "row_cu_seqlens"}).loss
            dist.all_reduce(control)
            sequence_parallel.enable(sp_model, world, batch_size=B)
            results[f"{model_name}/{row_name}"] = {
                "loss": float(ref.loss.detach()), "loss_diff": float((total - ref.loss.detach()).abs()),
                "logits_diff": float(logit_diff),
                "grad_diff": max(float((grads[k] - ref_grads[k]).abs().max()) for k in ref_grads),
                "grad_scale": max(float(g.abs().max()) for g in ref_grads.values()),
                "control_loss_diff": float((control - ref.loss.detach()).abs())}
    # DeepSpeed's own batch sharder gives the same slices (input ids, position ids, shifted labels)
    from deepspeed.runtime.sequence_parallel import parallel_state_sp as mpu
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

    row = rows()["packed"]
    pad = -row["input_ids"].shape[1] % world
    batch = {"input_ids": torch.nn.functional.pad(row["input_ids"], (0, pad)),
             "labels": torch.nn.functional.pad(row["labels"], (0, pad), value=IGNORE_INDEX),
             "position_ids": position_ids_from_cu_seqlens(pack_segments(row["cu_seqlens"], row["input_ids"].shape[1] + pad))}
    adapter = UlyssesSPDataLoaderAdapter([batch], sp_rank=mpu.get_sequence_parallel_rank(),
                                         sp_group=mpu.get_sequence_parallel_group(), sp_world_size=world,
                                         device=torch.device("cpu"))
    theirs, ours = next(iter(adapter)), shard_batch(row, rank, world, pad_token_id=0)
    results["adapter_equal"] = all(torch.equal(theirs[k], ours[k]) for k in ("input_ids", "position_ids", "shift_labels"))
    results["table"], results["syncs"] = backend_table_sp2(models, rank, world)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def backend_table_sp2(models: dict, rank: int, world: int) -> tuple[dict, dict]:
    """Each backend at SP 2 against SDPA at SP 2; SDPA at SP 2 against one process over the full row (SDPA)."""
    import torch.distributed as dist
    from backend_table import BACKENDS, DTYPES, compare, step, through
    from fake_kernels import count_host_syncs

    from longalign import sequence_parallel

    row = rows()["packed"]
    row["loss_weights"] = row["loss_weights"].float()
    shard = shard_batch(row, rank, world, pad_token_id=0)
    n, T = shard["input_ids"].shape[1], row["input_ids"].shape[1]
    real = slice(rank * n, min((rank + 1) * n, T))   # this rank's real tokens (the last slice ends in padding)
    table = {}
    for model_name in ("llama", "chatglm"):
        for dtype, torch_dtype in DTYPES.items():
            model = copy.deepcopy(models[model_name]).to(torch_dtype)
            full, _ = through("sdpa", dtype, lambda m=model: step(m, row, {k: row[k] for k in ("input_ids", "cu_seqlens")}))
            sequence_parallel.enable(model, world)
            results = {}
            for backend in BACKENDS:
                logits_kwargs = {k: shard[k] for k in ("input_ids", "position_ids", "row_cu_seqlens")}
                (logits, grads), calls = through(backend, dtype, lambda m=model, kw=logits_kwargs: step(m, shard, kw))
                dist.all_reduce(grads)                                    # the ranks' gradients add up
                results[backend] = (logits[:, : real.stop - real.start], grads), calls
            for backend, (result, calls) in results.items():
                sdpa = (full[0][:, real], full[1]) if backend == "sdpa" else results["sdpa"][0]
                cell = compare(result, sdpa)
                logits_diff = torch.tensor(cell["logits"])
                dist.all_reduce(logits_diff, op=dist.ReduceOp.MAX)
                table[f"{model_name}/{dtype}/{backend}"] = {**cell, "logits": float(logits_diff), "calls": calls,
                                                           "layers": model.config.num_hidden_layers}
            if model_name == "llama" and dtype == "fp32":  # host syncs of the attention path, once per forward?
                with torch.no_grad(), count_host_syncs() as syncs:
                    model.model(shard["input_ids"], position_ids=shard["position_ids"],
                                row_cu_seqlens=shard["row_cu_seqlens"])
    return table, dict(syncs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sp2_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "results.json"
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    results = json.loads(out.read_text())
    assert results.pop("adapter_equal") is True
    check_backend_table_sp2(results.pop("table"))
    syncs = results.pop("syncs")
    print(f"[figure] host syncs per forward, llama with 2 layers, SP 2 (this rank's model body): {syncs}")
    assert syncs == {"tolist": 1}  # the full row's segments, read once per forward; none per layer
    for case, r in results.items():
        print(f"SP {case}: loss {r['loss']:.6f} |dloss| {r['loss_diff']:.1e} max|dlogits| {r['logits_diff']:.1e} "
              f"max|dgrad| {r['grad_diff']:.1e} (grads up to {r['grad_scale']:.1e}); "
              f"control |dloss| {r['control_loss_diff']:.1e}")
        assert r["loss_diff"] <= GRAD_TOL * r["loss"], (case, r)
        assert r["logits_diff"] <= TOL, (case, r)
        assert r["grad_diff"] <= GRAD_TOL * r["grad_scale"], (case, r)
        assert r["control_loss_diff"] > 1e-4, (case, r)  # without the all-to-all the slices cannot see each other


def check_backend_table_sp2(table: dict) -> None:
    from backend_table import figure, within

    for key, cell in table.items():
        model, dtype, backend = key.split("/")
        print(figure(2, model, dtype, backend, cell, "one process, full row (sdpa)" if backend == "sdpa" else "sdpa"))
        assert within(cell, dtype), (key, cell)
        # the kernel ran in every layer: the forward, its recomputation in backward, the logits forward
        assert cell["calls"] == (0 if backend == "sdpa" else 3 * cell["layers"]), (key, cell)
