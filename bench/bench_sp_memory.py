"""Peak memory per device against sequence length under Ulysses sequence parallelism (SP 1/2/4/8), from a
model config, with the activation formula checked against what autograd really keeps on the tiny models.

Run as:
    python bench/bench_sp_memory.py [--output_file assets/sp_memory.png] [--check_tokens 1024,2048]

Inputs: the published configs of ChatGLM3-6B, Llama-2-7B and Llama-3-8B (hard-coded below) and, for the
check, tiny random Llama / ChatGLM models built here (no download).
Outputs: the check table (formula vs measured bytes on the CPU at SP 1 and 2), the memory table for 32k-1M
tokens, the longest sequence that fits 80 GB per device for each model and SP size, and the plot `--output_file`.

The formula (bytes; t = S / N tokens on each device, b = bytes of the training dtype, L layers, hidden h,
MLP width f, H query heads of size d, H_kv KV heads; under SP each device attends over the full row for H/N
query heads and max(H_kv, N)/N KV heads, so per token it keeps KV for H_kv' = max(H_kv, N) heads):
    a_layer  = t * [ 2 * (4h + 2bh)          two RMSNorms: fp32 copy of the input, normalised x, output
                     + b * (3H + 2H_kv') d    q, k, v as attention saves them, its output, the o_proj input
                     + 4H                     softmax statistics (fp32)
                     + 4bf + 8 ]              SwiGLU: gate, up, silu(gate), product; two rsqrt
             (SDPA at N = 1 keeps ChatGLM's fused qkv output alive as v: (4H + 3H_kv) d instead)
    a_head   = t * [ (4 + b) h + b h + b r ] + b V h    final norm, the loss's dL/dh and dL/dW, cos/sin (r dims)
Without checkpointing (the CPU check) activations = L * a_layer + a_head. For the GPU table (bf16,
flash-attn, gradient checkpointing per layer, ZeRO-3 with the optimizer offloaded to the CPU, 8 devices):
    peak = L * t * h * b                  each layer's checkpointed input
         + a_layer + t * (2f + 2h) * b    one layer recomputed, plus its backward's gradient buffers
         + a_head + 4 * 1024 * V          the loss's reused fp32 chunk buffer
         + 4 * P / 8 + 2 * 2 * P_layer    bf16 parameter and gradient shards, two gathered layers (ZeRO-3)
Communication buffers, the allocator's fragmentation and the CUDA context are not in it: leave headroom.
Only the CPU check is measured; the GPU figures are this formula's, not runs (no GPU in this build).
"""

import copy
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longalign.scriptargs import parse_args, run_main

GB = 1e9
DEVICE_MEMORY = 80 * GB
ZERO_DEVICES = 8


@dataclass
class Args:
    output_file: str = field(default="assets/sp_memory.png", metadata={"help": "where the plot is written"})
    check_tokens: str = field(default="1024,2048", metadata={"help": "row lengths of the CPU check (comma list)"})
    skip_check: bool = field(default=False, metadata={"help": "only the formula tables (no CPU measurement)"})


# ---------------------------------------------------------------------------------------------
# Configs (published config.json values) and the formula


@dataclass
class Shape:
    name: str
    L: int          # layers
    h: int          # hidden size
    f: int          # MLP intermediate size
    H: int          # query heads
    H_kv: int       # KV heads
    d: int          # head dim
    V: int          # vocabulary
    rot: int        # rotary dims per head
    params: float   # parameters
    fused_qkv: bool = False


MODELS = [
    Shape("ChatGLM3-6B", L=28, h=4096, f=13696, H=32, H_kv=2, d=128, V=65024, rot=64, params=6.24e9, fused_qkv=True),
    Shape("Llama-2-7B", L=32, h=4096, f=11008, H=32, H_kv=32, d=128, V=32000, rot=128, params=6.74e9),
    Shape("Llama-3-8B", L=32, h=4096, f=14336, H=32, H_kv=8, d=128, V=128256, rot=128, params=8.03e9),
]


def layer_bytes(m: Shape, t: int, N: int, b: int, sdpa: bool) -> float:
    kv = max(m.H_kv, N)
    attn = (4 * m.H + 3 * m.H_kv) if (sdpa and N == 1 and m.fused_qkv) else (3 * m.H + 2 * kv)
    return t * (2 * (4 * m.h + 2 * b * m.h) + b * attn * m.d + 4 * m.H + 4 * b * m.f + 8)


def head_bytes(m: Shape, t: int, b: int) -> float:
    return t * ((4 + b) * m.h + b * m.h + b * m.rot) + b * m.V * m.h


def activations_no_checkpointing(m: Shape, S: int, N: int, b: int = 4) -> float:
    """What autograd keeps at the end of the forward on each device (the CPU check: SDPA, no checkpointing)."""
    t = S // N
    return m.L * layer_bytes(m, t, N, b, sdpa=True) + head_bytes(m, t, b)


def gpu_peak(m: Shape, S: int, N: int, b: int = 2) -> dict:
    t = S // N
    act = (m.L * t * m.h * b + layer_bytes(m, t, N, b, sdpa=False) + t * (2 * m.f + 2 * m.h) * b
           + head_bytes(m, t, b) + 4 * 1024 * m.V)
    per_layer = (m.params - 2 * m.V * m.h) / m.L
    states = 4 * m.params / ZERO_DEVICES + 2 * 2 * per_layer
    return {"activations": act, "states": states, "total": act + states}


def longest_fitting(m: Shape, N: int) -> int:
    """The longest S (a multiple of 1024) whose peak fits DEVICE_MEMORY."""
    lo, hi = 0, 1 << 30
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        lo, hi = (mid, hi) if gpu_peak(m, mid, N)["total"] <= DEVICE_MEMORY else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------------
# The check: bytes autograd keeps for backward on the tiny models, 1 process and 2 (gloo)

TINY = dict(L=3, h=48, f=80, H=4, d=16, V=256)


def tiny_models() -> dict:
    from transformers import LlamaConfig

    from modeling_chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration
    from modeling_llama import LlamaForCausalLM

    t = TINY
    llama = LlamaConfig(vocab_size=t["V"], hidden_size=t["h"], intermediate_size=t["f"], num_hidden_layers=t["L"],
                        num_attention_heads=t["H"], num_key_value_heads=2, head_dim=t["d"],
                        max_position_embeddings=1 << 16)
    glm = ChatGLMConfig(num_layers=t["L"], padded_vocab_size=t["V"], hidden_size=t["h"], ffn_hidden_size=t["f"],
                        kv_channels=t["d"], num_attention_heads=t["H"], multi_query_attention=True,
                        multi_query_group_num=1, seq_length=1 << 16)
    torch.manual_seed(0)
    return {"llama": (LlamaForCausalLM(llama), Shape("tiny llama", H_kv=2, rot=t["d"], params=0, **t)),
            "chatglm": (ChatGLMForConditionalGeneration(glm),
                        Shape("tiny chatglm", H_kv=1, rot=t["d"] // 2, params=0, fused_qkv=True, **t))}


def saved_bytes(model, batch: dict) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model(**batch).loss.backward()
    return sum(seen.values())


def check_batch(S: int) -> dict:
    """A packed row of S tokens (sequences of S/4, S/2 and S/4), every token after the first a target."""
    g = torch.Generator().manual_seed(S)
    ids = torch.randint(1, TINY["V"], (1, S), generator=g)
    cu = torch.tensor([0, S // 4, 3 * S // 4, S], dtype=torch.int32)
    labels = ids.clone()
    labels[0, cu[:-1].long()] = -100
    return {"input_ids": ids, "labels": labels, "loss_weights": (labels != -100).float(), "cu_seqlens": cu}


def measure(rank: int, world: int, port: int, lengths: list[int], out: str) -> None:
    """One process (world 1) or one of two (gloo): measured bytes on this rank for every model and length."""
    import torch.distributed as dist

    from longalign import sequence_parallel

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for name, (model, _) in tiny_models().items():
        model = copy.deepcopy(model)
        if world > 1:
            sequence_parallel.enable(model, world)
        for S in lengths:
            batch = check_batch(S)  # one process: the packed row as train.py feeds it
            if world > 1:
                batch = sequence_parallel.shard_batch(batch, rank, world, pad_token_id=0)
            results[f"{name}/{S}"] = saved_bytes(model, batch)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def run_check(lengths: list[int], tmp: Path) -> list[tuple]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    measure(0, 1, 0, lengths, str(tmp / "sp1.json"))
    mp.spawn(measure, args=(2, port, lengths, str(tmp / "sp2.json")), nprocs=2, join=True)
    shapes = {name: shape for name, (_, shape) in tiny_models().items()}
    rows = []
    for N in (1, 2):
        measured = json.loads((tmp / f"sp{N}.json").read_text())
        for key, value in measured.items():
            name, S = key.split("/")
            rows.append((name, int(S), N, activations_no_checkpointing(shapes[name], int(S), N), value))
    return rows


# ---------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> dict:
    import tempfile

    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    out = {}
    if not args.skip_check:
        lengths = [int(x) for x in args.check_tokens.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_check(lengths, Path(tmp))
        print("check: bytes autograd keeps for backward on each device (tiny models, fp32, CPU, SDPA)")
        print(f"{'model':<14}{'tokens':>8}{'SP':>4}{'formula':>12}{'measured':>12}{'ratio':>8}")
        for name, S, N, predicted, measured in rows:
            print(f"{name:<14}{S:>8}{N:>4}{predicted:>12,.0f}{measured:>12,}{predicted / measured:>8.4f}")
        out["check"] = rows

    lengths = [32768 * 2 ** i for i in range(6)]  # 32k .. 1M
    print("\npeak memory per device, GB (bf16, flash-attn, gradient checkpointing, ZeRO-3 + CPU-offloaded "
          "optimizer on 8 devices; formula, not measured)")
    print(f"{'model':<13}{'SP':>3}" + "".join(f"{S // 1024:>8}k" for S in lengths) + f"{'longest ≤ 80 GB':>18}")
    table = {}
    for m in MODELS:
        for N in (1, 2, 4, 8):
            peaks = [gpu_peak(m, S, N)["total"] / GB for S in lengths]
            longest = longest_fitting(m, N)
            table[m.name, N] = (peaks, longest)
            print(f"{m.name:<13}{N:>3}" + "".join(f"{p:>9.1f}" for p in peaks) + f"{longest // 1024:>17,}k")
    out["table"] = table
    plot(table, lengths, Path(args.output_file))
    print(f"\nplot -> {args.output_file}")
    return out


def plot(table: dict, lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(4.2 * len(MODELS), 3.6), sharey=True)
    for ax, m in zip(axes, MODELS, strict=True):
        for N in (1, 2, 4, 8):
            peaks, longest = table[m.name, N]
            ax.plot([S / 1024 for S in lengths], peaks, marker="o", label=f"SP {N} (fits ≤ {longest // 1024:,}k)")
        ax.axhline(DEVICE_MEMORY / GB, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([S / 1024 for S in lengths], [f"{S // 1024}k" for S in lengths])
        ax.set_title(m.name)
        ax.set_xlabel("sequence length (tokens)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("peak per device (GB, formula)")
    fig.suptitle("Ulysses SP: peak memory per device (bf16, checkpointing, ZeRO-3 offload, 8 devices); dashed: 80 GB",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
