"""Speed and memory of our model files against stock transformers, measured side by side.

(a) time of one training step (forward + backward with labels) on ONE packed row of 8 sequences
    (4096 tokens): ours with `cu_seqlens` vs transformers' LlamaForCausalLM given per-sequence
    `position_ids`, from which it builds the block-diagonal mask itself. Both run in this process,
    alternating, after a warm-up; the ratio of each repeat is ours / transformers, and the median is
    printed. Their losses are printed too: they must agree (same weights, same targets).
(b) peak memory growth (RSS) of one forward + backward with labels on an 8192-token sequence,
    each measurement in a fresh process (so no allocator cache or earlier peak is shared),
    alternating ours / transformers, median ratio printed.

Run as:
    python bench/bench_model.py [--repeats 3 --threads 2]

Inputs: none (random weights and tokens, seeded). Outputs: the figures on stdout (one line each),
the last line `RESULT time_ratio=... memory_ratio=...`. Model: hidden 256, 4 layers, 8 heads / 4 KV
heads, intermediate 688, vocab 32,000, fp32, on CPU (the flash-attn path is not exercised here).
"""

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from longalign.scriptargs import parse_args, run_main
from modeling_llama import LlamaForCausalLM


@dataclass
class BenchArgs:
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    num_layers: int = field(default=4, metadata={"help": "decoder layers"})
    num_heads: int = field(default=8, metadata={"help": "query heads"})
    num_kv_heads: int = field(default=4, metadata={"help": "key/value heads (GQA)"})
    intermediate_size: int = field(default=688, metadata={"help": "MLP width (Llama's 8/3 ratio)"})
    vocab_size: int = field(default=32000, metadata={"help": "vocabulary (Llama-2's)"})
    pack_tokens: int = field(default=4096, metadata={"help": "(a) tokens in the packed row"})
    pack_sequences: int = field(default=8, metadata={"help": "(a) sequences in the packed row"})
    memory_tokens: int = field(default=8192, metadata={"help": "(b) tokens of the memory step"})
    repeats: int = field(default=3, metadata={"help": "measurements per figure (median reported)"})
    threads: int = field(default=2, metadata={"help": "torch intra-op threads"})
    seed: int = field(default=0, metadata={"help": "seed of weights, lengths and tokens"})
    worker: str = field(default="", metadata={"help": "internal: 'ours' or 'transformers' runs one memory "
                                                      "measurement in this (fresh) process and prints JSON"})


# ---------------------------------------------------------------------------------------------
# Models and inputs


def build_models(args: BenchArgs, which=("ours", "transformers")) -> dict:
    """The same random weights in both implementations (transformers' init, copied into ours)."""
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads, max_position_embeddings=max(args.pack_tokens, args.memory_tokens),
        attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    ref = transformers.LlamaForCausalLM(config).train()
    models = {"transformers": ref} if "transformers" in which else {}
    if "ours" in which:
        ours = LlamaForCausalLM(config).train()
        ours.load_state_dict(ref.state_dict())
        models["ours"] = ours
    return models


def packed_row(args: BenchArgs):
    """Random lengths summing to pack_tokens -> ids (1, T), cu_seqlens (n+1,), position_ids, labels."""
    g = torch.Generator().manual_seed(args.seed)
    cuts = torch.randperm(args.pack_tokens - 1, generator=g)[: args.pack_sequences - 1].sort().values + 1
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([args.pack_tokens])]).to(torch.int32)
    ids = torch.randint(0, args.vocab_size, (1, args.pack_tokens), generator=g)
    starts = torch.repeat_interleave(cu[:-1].long(), (cu[1:] - cu[:-1]).long())
    position_ids = (torch.arange(args.pack_tokens) - starts)[None]
    labels = ids.clone()
    labels[0, cu[:-1].long()] = -100  # a sequence's first token is never a target
    return ids, cu, position_ids, labels


def step(model, name, ids, labels, cu=None, position_ids=None) -> float:
    """One forward + backward with labels; returns the loss."""
    model.zero_grad(set_to_none=True)
    if name == "ours":
        loss = model(ids, cu_seqlens=cu, labels=labels).loss
    else:
        loss = model(ids, position_ids=position_ids, labels=labels, use_cache=False).loss
    loss.backward()
    return loss.item()


# ---------------------------------------------------------------------------------------------
# (a) time, side by side in this process


def bench_time(args: BenchArgs) -> float:
    models = build_models(args)
    ids, cu, position_ids, labels = packed_row(args)
    losses = {name: step(m, name, ids, labels, cu, position_ids) for name, m in models.items()}  # warm-up
    print(f"(a) losses on the pack: ours {losses['ours']:.6f}  transformers {losses['transformers']:.6f}  "
          f"|diff| {abs(losses['ours'] - losses['transformers']):.2e}")
    ratios = []
    for r in range(args.repeats):
        seconds = {}
        for name, m in models.items():
            t0 = time.perf_counter()
            step(m, name, ids, labels, cu, position_ids)
            seconds[name] = time.perf_counter() - t0
        ratios.append(seconds["ours"] / seconds["transformers"])
        print(f"(a) repeat {r + 1}: ours {seconds['ours']:.2f} s  transformers {seconds['transformers']:.2f} s  "
              f"ratio {ratios[-1]:.3f}")
    return statistics.median(ratios)


# ---------------------------------------------------------------------------------------------
# (b) peak memory growth, one fresh process per measurement


def proc_status(key: str) -> int:
    """A kB field of /proc/self/status (VmRSS: resident now; VmHWM: peak resident) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def memory_worker(args: BenchArgs) -> None:
    """Runs in a fresh process: peak RSS growth of one step of `args.worker`, printed as JSON."""
    model = build_models(args, which=(args.worker,))[args.worker]
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab_size, (1, args.memory_tokens), generator=g)
    # reset the peak-RSS mark to the current RSS (ru_maxrss would not do: it survives fork + exec and so
    # starts at the parent's size), then one step
    Path("/proc/self/clear_refs").write_text("5")
    before = proc_status("VmRSS")
    loss = step(model, args.worker, ids, ids.clone())
    print(json.dumps({"growth": proc_status("VmHWM") - before, "baseline": before, "loss": loss}))


def bench_memory(args: BenchArgs) -> float:
    cmd = [sys.executable, __file__] + [f"--{k}={v}" for k, v in asdict(args).items() if k != "worker"]
    ratios = []
    for r in range(args.repeats):
        growth = {}
        for name in ("ours", "transformers"):
            out = subprocess.run(cmd + [f"--worker={name}"], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            growth[name] = result["growth"]
        ratios.append(growth["ours"] / growth["transformers"])
        print(f"(b) repeat {r + 1}: ours +{growth['ours'] / 2**20:.0f} MB  transformers "
              f"+{growth['transformers'] / 2**20:.0f} MB  ratio {ratios[-1]:.3f}")
    return statistics.median(ratios)


def main() -> None:
    (args,) = run_main(lambda a: parse_args((BenchArgs,), a), None)  # bad flags: one line, exit 2
    torch.set_num_threads(args.threads)
    if args.worker:
        memory_worker(args)
        return
    print(f"config: {json.dumps({k: v for k, v in asdict(args).items() if k != 'worker'})}, fp32, CPU, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    time_ratio = bench_time(args)
    print(f"(a) packed training step, {args.pack_tokens} tokens / {args.pack_sequences} sequences: "
          f"median time ratio ours/transformers = {time_ratio:.3f}")
    memory_ratio = bench_memory(args)
    print(f"(b) {args.memory_tokens}-token loss step: median peak-memory-growth ratio ours/transformers = "
          f"{memory_ratio:.3f}")
    print(f"RESULT time_ratio={time_ratio:.3f} memory_ratio={memory_ratio:.3f}")


if __name__ == "__main__":
    main()
