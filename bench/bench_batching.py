"""Figure 5 of the paper in miniature: training time of naive batching, sorted batching and packing (with
and without --balance) on the same long-tailed data, measured on a tiny model on the CPU.

Run as:
    python bench/bench_batching.py [--output_dir runs/bench_batching] [--num_long 200 --num_short 600 --max_length 2048]

What it does. Synthetic LongAlign-shaped chats (a long tail of long documents + many short chats) go
through pre_tokenize.py and sort_and_group.py (K = 8, with and without --balance), exactly as for
training. For each method the micro-steps of one epoch come from the same Schedule train.py uses; every
device's micro-batch is built by the same dataset and collator and timed (forward + backward, the
fastest of --repeats round-robin rounds over the K devices, one thread). The 8 devices of a micro-step
are synchronous, so a micro-step takes as long as its slowest device:

    time  = sum over micro-steps of max over devices of t(device)
    idle  = 1 - sum of t(device) over real units / (K * time)   (device-time spent waiting; a dummy that the
            last, short group hands a device counts as waiting); "full steps" = the same over the micro-steps
            without a dummy, i.e. what the batching method itself wastes

The optimizer step is left out: it costs the same per step whatever the batching and would only add a
constant. Prints the times, the ratios naive/sort and naive/pack beside the paper's (Figure 5,
8 x A800: 2.2-2.9x) and the idle fractions; writes results.json in --output_dir and the bar chart PNG.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from longalign.batches import Collator, SlotDataset
from longalign.schedule import Schedule
from longalign.scriptargs import parse_args, run_main
from tools import synthetic

# Paper Figure 5: hours on 8 x A800 for (naive, pack, sort)
PAPER = {"ChatGLM3-6B-64k": (45.4, 20.5, 19.1), "Llama-2-7B-64k": (67.2, 23.4, 23.3),
         "Llama-2-13B-64k": (117.2, 41.2, 44.5)}


@dataclass
class Args:
    output_dir: str = field(default="runs/bench_batching", metadata={"help": "work folder (data, stores, results)"})
    png: str = field(default="assets/bench_batching.png", metadata={"help": "where the bar chart goes"})
    num_long: int = field(default=200, metadata={"help": "long conversations (LongAlign-10k stand-in)"})
    long_min_words: int = field(default=110, metadata={
        "help": "shortest long document in words; the longest is 8x (about L/8 to L tokens, as 8k-64k in the paper)"})
    num_short: int = field(default=600, metadata={"help": "short chats (ShareGPT stand-in)"})
    max_length: int = field(default=2048, metadata={"help": "L: longest sequence and pack size in tokens"})
    group_size: int = field(default=8, metadata={"help": "K: simulated synchronous devices"})
    hidden_size: int = field(default=128, metadata={
        "help": "tiny Llama hidden size: 128 keeps the output layer a minor cost, as in a 7B model (with 64 and a "
                "vocabulary of 1024 it would dominate and make cost a function of target tokens, not length)"})
    num_layers: int = field(default=2, metadata={"help": "tiny Llama layers"})
    repeats: int = field(default=3, metadata={
        "help": "rounds: time each micro-batch this many times (round-robin over the K devices), keep the fastest"})
    seed: int = field(default=0, metadata={"help": "seed of the data and of the naive shuffle"})
    methods: str = field(default="naive,sort,pack,pack --balance", metadata={
        "help": "comma-separated subset to time (naive is needed for the ratios)"})


# ---------------------------------------------------------------------------------------------
# Data and model, made the way the pipeline makes them

def prepare(args: Args):
    import pre_tokenize
    import sort_and_group

    out = Path(args.output_dir)
    synthetic.write_chat_data(out / "raw", args.num_long, args.num_short, args.long_min_words, args.seed)
    tokenizer = synthetic.train_tokenizer(out / "tokenizer")
    model_dir = out / "model"
    model = synthetic.build_tiny_llama(model_dir, tokenizer, hidden_size=args.hidden_size,
                                       num_layers=args.num_layers, num_heads=4, num_kv_heads=2)
    # The balance cost model's constants (longalign/packing.py), computed for THIS model as the defaults
    # are for Llama-2-7B
    from longalign.packing import cost_constants

    c = model.config
    l0, r = cost_constants(sum(p.numel() for p in model.parameters()), c.vocab_size, c.hidden_size,
                           c.num_hidden_layers, c.tie_word_embeddings)
    print(f"bench_batching: cost model l0 = {l0:.0f} tokens, r = {r:.3f} for this model")
    stores = {}
    for name, balance in (("plain", False), ("balance", True)):
        store = out / f"store-{name}"
        pre_tokenize.main(["--model_name_or_path", str(out / "tokenizer"), "--template", "chat_template",
                           "--long_file", str(out / "raw" / "raw" / "long.jsonl"),
                           "--short_file", str(out / "raw" / "raw" / "sharegpt.jsonl"), "--datanum", "all",
                           "--max_length", str(args.max_length), "--output_dir", str(store)])
        sort_and_group.main(["--train_dir", str(store), "--group_size", str(args.group_size), "--max_length",
                             str(args.max_length), "--attention_length", f"{l0:.0f}",
                             "--target_cost", f"{r:.4f}"] + (["--balance"] if balance else []))
        stores[name] = store
    return model_dir, stores


def schedules(args: Args, stores: dict) -> dict[str, tuple[Schedule, Path]]:
    from longalign.packing import PACK_PLAN, SORT_PLAN, read_pack_plan, read_sort_plan
    from longalign.store import TokenizedStore

    out = {}
    for label, method, store_name in (("naive", "naive", "plain"), ("sort", "sort", "plain"),
                                      ("pack", "pack", "plain"), ("pack --balance", "pack", "balance")):
        store = TokenizedStore(stores[store_name])
        kwargs = {}
        if method == "sort":
            kwargs["groups"] = read_sort_plan(stores[store_name] / SORT_PLAN)["groups"]
        elif method == "pack":
            plan = read_pack_plan(stores[store_name] / PACK_PLAN)
            kwargs.update(groups=plan["steps"], packs=plan["packs"])
        out[label] = (Schedule(method, store.num_target_tokens, store.lengths, world_size=args.group_size,
                               per_device=1, accumulation=1, seed=args.seed, reduction="sequence", **kwargs), store)
    return out


# ---------------------------------------------------------------------------------------------
# Timing

def time_method(model, schedule: Schedule, store, repeats: int, label: str) -> dict:
    """Per micro-step: the device times; returns the synchronous total and the idle fraction."""
    from longalign.batches import ScheduleSampler

    dataset = SlotDataset(store, ScheduleSampler(schedule))
    collate = Collator(schedule.method == "pack", store.meta.get("pad_token_id") or 0)
    slots = schedule.slots(0)
    K = schedule.K
    step_times, useful, full = [], [], []  # per micro-step: slowest device, work on real units, no dummy
    raw = []  # per micro-step: (repeats, K) seconds, every round as measured
    for m in tqdm(range(schedule.num_micro_steps), desc=label, leave=False):
        step = slots[m * K:(m + 1) * K]
        batches = [collate([dataset[slot]]) for slot in step]
        # The machine's speed drifts over seconds (other jobs, the VM), so the K devices of a micro-step
        # are timed in turn, round after round, and each keeps its fastest round: a slow spell hits all
        # K alike instead of making one device look slow.
        rounds = []  # (repeats, K) seconds
        for _ in range(repeats):
            rounds.append([])
            for batch in batches:
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                model(**batch).loss.backward()
                rounds[-1].append(time.perf_counter() - t0)
        raw.append(rounds)
        times = [min(device) for device in zip(*rounds, strict=True)]
        real = [any(c > 0 for c in slot.coefs) for slot in step]  # a dummy (weight 0) is work that counts as idle
        step_times.append(max(times))
        useful.append(sum(t for t, r in zip(times, real, strict=True) if r))
        full.append(all(real))
    total = float(sum(step_times))
    full_time = sum(t for t, f in zip(step_times, full, strict=True) if f)
    full_useful = sum(u for u, f in zip(useful, full, strict=True) if f)
    return {"seconds": total, "micro_steps": schedule.num_micro_steps, "idle": 1 - sum(useful) / (K * total),
            "raw_seconds": raw,
            # the last, short group's empty devices are a property of the data size (7 of ~900 packs at 10k
            # sequences), not of the batching: the idle fraction of the full micro-steps shows the latter
            "idle_full_steps": 1 - full_useful / (K * full_time) if full_time else float("nan")}


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory instead of returning it to the OS, so that each timed
    forward + backward does not pay page faults for buffers the previous one just freed (measured: about
    1,500 page faults per micro-batch without this, none with it). No-op where there is no glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: larger blocks still use mmap
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        libc.mallopt(M_TOP_PAD, 1 << 30)
    except (OSError, AttributeError):
        pass


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    torch.set_num_threads(1)  # one core per simulated device: no thread contention inside a measurement
    keep_freed_memory()
    torch.manual_seed(args.seed)
    model_dir, stores = prepare(args)
    from longalign.models import load_model

    model = load_model(str(model_dir), dtype=torch.float32)
    model.train()
    wanted = args.methods.split(",")
    results = {label: time_method(model, s, store, args.repeats, label)
               for label, (s, store) in schedules(args, stores).items() if label in wanted}

    naive = results["naive"]["seconds"] if "naive" in results else float("nan")
    print(f"\nbench_batching: K = {args.group_size} synchronous devices, L = {args.max_length}, "
          f"{len(schedules(args, stores)['naive'][1])} sequences, tiny Llama (hidden {args.hidden_size}, "
          f"{args.num_layers} layers), CPU")
    print(f"{'method':<16}{'time (s)':>10}{'micro-steps':>13}{'naive / x':>11}{'idle':>8}{'idle, full steps':>18}")
    for label, r in results.items():
        r["speedup"] = naive / r["seconds"]
        print(f"{label:<16}{r['seconds']:>10.2f}{r['micro_steps']:>13}{r['speedup']:>10.2f}x{100 * r['idle']:>7.1f}%"
              f"{100 * r['idle_full_steps']:>17.1f}%")
    print("paper (8 x A800, Figure 5), naive / pack and naive / sort: "
          + "; ".join(f"{k} {n / p:.2f}x, {n / s:.2f}x" for k, (n, p, s) in PAPER.items()))

    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    if "naive" in results:
        plot(results, Path(args.png))
    return results


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
    labels = list(results)
    ours = [results["naive"]["seconds"] / results[k]["seconds"] for k in labels]
    ax = axes[0]
    x = np.arange(len(labels))
    ax.bar(x, ours, color=["#999999", "#4C72B0", "#DD8452", "#C44E52"])
    for i, v in enumerate(ours):
        ax.text(i, v, f"{v:.2f}x\nidle {100 * results[labels[i]]['idle_full_steps']:.1f}%", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("speed-up over naive")
    ax.set_ylim(0, max(ours) * 1.3)
    ax.set_title("measured: tiny Llama, CPU, K = 8 synchronous devices", fontsize=9)
    ax = axes[1]
    width = 0.25
    for j, (name, (n, p, s)) in enumerate(PAPER.items()):
        ax.bar(np.arange(3) + (j - 1) * width, [1, n / s, n / p], width, label=name)
    ax.set_xticks(np.arange(3), ["naive", "sort", "pack"])
    ax.set_title("paper Figure 5 (8 x A800), speed-up over naive", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"bar chart -> {png}")


if __name__ == "__main__":
    main()
