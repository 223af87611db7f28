"""Host syncs per forward of the model files: how often the host waits for the GPU, counted on CPU.

Run as:  python bench/bench_host_syncs.py [--tree DIR]
  --tree: take the model files and longalign/ from another checkout (e.g. an older commit unpacked with
  `git archive <commit> | tar -x -C DIR`), to count before and after a change with the same counter.
Counts (tests/fake_kernels.count_host_syncs): every .item() / int() / bool() / .tolist() of a tensor, and the
ops whose output size depends on data (nonzero, masked_select, unique, repeat_interleave without output_size).
Prints one line per case for tiny Llamas of 2 and 4 layers: a packed training forward (model + loss), the model
body alone, two right-padded rows, one decoding step of generate(), and a packed training forward per rank under
sequence parallelism (2 gloo processes). Inputs: none. Outputs: the printed lines.
"""

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from longalign.scriptargs import parse_args, run_main  # noqa: E402


@dataclass
class Args:
    tree: str | None = field(default=None, metadata={"help": "checkout to take the model files and longalign/ from"})


def setup_path(tree: str | None) -> None:
    if tree:  # the argument layer came from this checkout: drop it so that `longalign` is the tree's own
        for name in [m for m in sys.modules if m == "longalign" or m.startswith("longalign.")]:
            del sys.modules[name]
    sys.path[:0] = [tree or str(ROOT), str(ROOT / "tests")]


def tiny_llama(layers: int):
    import torch
    from transformers import LlamaConfig

    from modeling_llama import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def packed_batch() -> dict:
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 96, (1, 29), generator=g)
    cu = torch.tensor([0, 7, 19, 29], dtype=torch.int32)
    labels = x.clone()
    labels[0, cu[:-1].long()] = -100
    return dict(input_ids=x, labels=labels, loss_weights=torch.rand(1, 29, generator=g), cu_seqlens=cu)


def line(what: str, counts) -> str:
    return f"{what}: {sum(counts.values())} {dict(counts)}"


def one_process() -> None:
    import torch
    from fake_kernels import count_host_syncs
    from transformers.cache_utils import DynamicCache

    for layers in (2, 4):
        model = tiny_llama(layers)
        batch = packed_batch()
        x = torch.randint(1, 96, (2, 20), generator=torch.Generator().manual_seed(2))
        mask = torch.ones_like(x)
        mask[1, 15:] = 0
        with count_host_syncs() as packed:
            model(**batch)
        with count_host_syncs() as body:
            model.model(batch["input_ids"], cu_seqlens=batch["cu_seqlens"])
        with count_host_syncs() as padded:
            model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100))
        model.eval()
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(x, attention_mask=torch.ones_like(x), past_key_values=cache, use_cache=True)
            with count_host_syncs() as decode:  # as generate() calls it: with the (all-ones) attention mask
                model(x[:, :1], attention_mask=torch.ones(2, 21, dtype=torch.long), past_key_values=cache,
                      use_cache=True, position_ids=torch.full((2, 1), 20))
        print(f"[figure] host syncs, {layers} layers | " + " | ".join([
            line("packed training forward", packed), line("model body", body),
            line("2 padded rows, training forward", padded), line("decoding step", decode)]), flush=True)


def sp_worker(rank: int, port: int, tree: str | None) -> None:
    setup_path(tree)
    import torch.distributed as dist
    from fake_kernels import count_host_syncs

    from longalign import sequence_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for layers in (2, 4):
        model = tiny_llama(layers)
        sequence_parallel.enable(model, 2)
        shard = sequence_parallel.shard_batch(packed_batch(), rank, 2, pad_token_id=0)
        model(**shard)  # DeepSpeed's first call sets itself up
        with count_host_syncs() as counts:
            model(**shard)
        if rank == 0:
            print(f"[figure] host syncs, {layers} layers | " + line("SP 2 packed training forward, per rank", counts),
                  flush=True)
    dist.destroy_process_group()


def main(argv=None) -> None:
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)  # bad flags: one line, exit 2
    setup_path(args.tree)
    one_process()
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(sp_worker, args=(port, args.tree), nprocs=2)


if __name__ == "__main__":
    main()
