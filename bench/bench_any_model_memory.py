"""Peak memory of one packed training step on a family without a model file of ours (Qwen3): our path
(longalign/any_model.py: `cu_seqlens`, per-sequence attention, the fused loss) against stock transformers'
own packing (per-sequence `position_ids`, from which it builds a dense (1, 1, T, T) mask under SDPA, then full
fp32 logits and a token-mean loss), in one run.

Each measurement runs in a fresh process (no allocator cache or earlier peak shared): peak RSS growth
(VmHWM after resetting it, minus VmRSS before) of one forward + backward with labels on ONE row of T tokens,
`--sequences` sequences of equal length. Both get the same random weights and tokens; their losses are printed
(ours is Eq. 2 per-sequence weighting with w = 1/N_total, i.e. the same token mean as transformers', so they agree).
Rows of several lengths show how each grows: ours with T, transformers' with T^2 (the mask) plus T x V (logits).

Run as:
    python bench/bench_any_model_memory.py [--tokens 4096,8192,16384 --threads 2]

Inputs: none (seeded random weights and tokens). Outputs: one line per measurement, then
`RESULT tokens=... ours_mb=... transformers_mb=... ratio=...` for the longest row. Model: Qwen3 (transformers' own
config class), hidden 128, 2 layers, 4 heads / 2 KV heads, head_dim 32, vocab 32,000, fp32, CPU.
"""

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from longalign import any_model
from longalign.scriptargs import parse_args, run_main


@dataclass
class BenchArgs:
    tokens: str = field(default="4096,8192,16384", metadata={"help": "row lengths T, comma-separated"})
    sequences: int = field(default=8, metadata={"help": "sequences per packed row (equal lengths)"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    num_layers: int = field(default=2, metadata={"help": "decoder layers"})
    vocab_size: int = field(default=32000, metadata={"help": "vocabulary (Llama-2's; Qwen3's 151,936 would need "
                                                            "~20 GB of stock logits at 16k)"})
    threads: int = field(default=2, metadata={"help": "torch intra-op threads"})
    seed: int = field(default=0, metadata={"help": "seed of weights and tokens"})
    worker: str = field(default="", metadata={"help": "internal: 'ours:T' or 'transformers:T' runs one measurement "
                                                      "in this (fresh) process and prints JSON"})


def build(args: BenchArgs, ours: bool):
    config = transformers.Qwen3Config(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                                      intermediate_size=args.hidden_size * 3, num_hidden_layers=args.num_layers,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=65536, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    cls = any_model.wrap(transformers.Qwen3ForCausalLM) if ours else transformers.Qwen3ForCausalLM
    return cls._from_config(config, attn_implementation=any_model.NAME if ours else "sdpa").train()


def proc_status(key: str) -> int:
    """A kB field of /proc/self/status (VmRSS: resident now; VmHWM: peak resident) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def worker(args: BenchArgs) -> None:
    name, T = args.worker.split(":")
    T, n = int(T), args.sequences
    model = build(args, ours=name == "ours")
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab_size, (1, T), generator=g)
    cu = torch.arange(0, T + 1, T // n, dtype=torch.int32)                        # n sequences of T / n tokens
    labels = ids.clone()
    labels[0, cu[:-1].long()] = -100                                              # a sequence's first token
    Path("/proc/self/clear_refs").write_text("5")                                  # reset the peak to now
    before = proc_status("VmRSS")
    if name == "ours":
        targets = int((labels != -100).sum())  # each sequence's first token is no target: the shift loses none
        weights = torch.full((1, T), 1.0 / targets)
        loss = model(ids, cu_seqlens=cu, labels=labels, loss_weights=weights).loss
    else:
        position_ids = (torch.arange(T) % (T // n))[None]                          # restart in every sequence
        # transformers' own shift would make each sequence's last token predict the next one's first (a -100 here
        # anyway); shifted explicitly, so that both compute the same mean over the same T - n targets
        shifted = torch.cat([labels[:, 1:], torch.full((1, 1), -100)], dim=1)
        shifted[0, (cu[1:-1] - 1).long()] = -100
        # use_cache=False: with a cache (config.use_cache defaults to true, also in train mode) transformers 5.24
        # skips its packed-sequence detection and attends across the whole row
        loss = model(ids, position_ids=position_ids, labels=labels, shift_labels=shifted, use_cache=False).loss
    loss.backward()
    print(json.dumps({"growth": proc_status("VmHWM") - before, "loss": float(loss)}))


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((BenchArgs,), a), argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return {}
    print(f"config: {json.dumps({k: v for k, v in asdict(args).items() if k != 'worker'})}, Qwen3, fp32, CPU, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    cmd = [sys.executable, __file__] + [f"--{k}={v}" for k, v in asdict(args).items() if k != "worker"]
    result = {}
    for T in map(int, args.tokens.split(",")):
        mb = {}
        for name in ("ours", "transformers"):
            out = subprocess.run(cmd + [f"--worker={name}:{T}"], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            mb[name] = r["growth"] / 2**20
            print(f"T={T}: {name:12s} peak RSS growth {mb[name]:8.0f} MB  loss {r['loss']:.6f}", flush=True)
        result = {"tokens": T, "ours_mb": round(mb["ours"]), "transformers_mb": round(mb["transformers"]),
                  "ratio": round(mb["ours"] / mb["transformers"], 3)}
        print(f"T={T}: ratio ours / transformers = {result['ratio']:.3f}", flush=True)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
