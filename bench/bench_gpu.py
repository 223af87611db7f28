"""The GPU proof in one run: packed-attention parity on the real kernels, a training step's tokens/s, MFU and
memory at 16k-64k side by side with stock transformers, and the loss step's memory. One table + one JSON.

Run as:
    python bench/bench_gpu.py --out runs/bench_gpu/full.json        # CUDA: the full run, about 3-5 min
    python bench/bench_gpu.py --smoke --out /tmp/smoke.json         # tiny shapes on any device, seconds
    bash bench/gpu_run.sh                                           # on a lent GPU: smoke, then full, under $OUT

Stages, in the order they run (each guarded: an error or an OOM is recorded in its stage, or its row, and the
rest still runs; each time-boxed by SIGALRM, all of them by --time_budget; the JSON is rewritten after every
stage, so a run killed from outside keeps what it measured):
  env               versions, device, the attention backends found (a kernel counts when it imports and passes
                    longalign/attention.py's probe) and why the others are missing
  matmul            (n x n) @ (n x n) in bf16 on random data, n = 8192: the chip's measured rate, MFU's denominator
  attention_parity  one attention LAYER (q/k/v/o projections, RoPE, packed attention) of Llama-2-7B shape (32 heads,
                    MHA) and of ChatGLM3-6B shape (32 heads, 2 KV groups) in bf16 on a 16k pack of ~20 sequences,
                    through each backend: max |d| and relative error of its output and gradients (input and weights)
                    against the same layer in fp32 through exact per-sequence SDPA; ms per forward + backward
  model_parity      the full model of each shape cut to 2 layers (embedding, 2 blocks, norm, fused weighted loss),
                    bf16 with activation checkpointing, each backend: loss and gradients against the fp32 model
  loss_memory_64k   the loss step alone on 64k hidden states (loss + gradients of hidden and output weight), vocab
                    32,000 (Llama-2) and 65,024 (ChatGLM3): ours (chunked, never a (T, V) fp32 tensor) against
                    lm_head + transformers' ForCausalLMLoss: peak memory and time
  train_64k/32k/16k one training step (forward + backward, fused weighted loss, activation checkpointing, bf16) of a
                    Llama-2-7B-shaped model with --layers decoder layers (default 8 of the real 32: room for stock
                    transformers beside it and three pack sizes inside 6 minutes) on one pack of a LongAlign-shaped
                    length mix (longalign/packing.py, best-fit-decreasing; the pack with the median sequence count,
                    3 at 64k: most packs hold a few long documents, the mean of 11 comes from packs of short chats);
                    then stock transformers.LlamaForCausalLM with the same weights on the same pack: position_ids
                    packing under sdpa (and flash_attention_2 where it imports), its own token-mean loss. tokens/s,
                    MFU, peak memory, and the ratios ours/theirs
  qwen3_step        skipped: the generic any-model path (issue 19) is not in this branch

FLOPs of a step (model FLOPs: activation checkpointing's recompute is not counted, as MFU is usually stated):
    F = 6 * N * T + 6 * n_layers * d_attn * sum_i l_i^2
N = parameters that multiply (decoder layers and output layer; the embedding lookup is no matmul), T = tokens of the
pack, l_i = its sequence lengths, d_attn = heads * head_dim (causal attention per layer: QK^T and PV are 2 * 2 *
l^2 * d_attn forward, half of it masked, times 3 for forward + backward). MFU = F / step time / measured matmul rate.
Targets: every token but a sequence's first (the worst case for ours, whose loss runs on target rows only); loss
weights 1 / (M * N_i) (Eq. 4 for one pack). Memory: peak = parameters + the step's allocation peak (gradients
included; both models stay resident and their weights are not counted twice); on CPU (--smoke) a dispatch-mode
tracker of tensor storages stands in for torch.cuda.max_memory_allocated.

Software of the GPU machine: Python 3.12, torch 2.11 + CUDA 13, transformers 5.17, no network, no flash-attn. What
this script and the repository code it calls use was checked in those versions' sources (the torch 2.11.0 and
transformers 5.17.0 wheels from PyPI, unpacked), and the smoke run passes here under transformers 5.17.0 with
huggingface_hub 1.33.0 (the image's):
  * torch 2.11 torch/nn/attention/varlen.py: `def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *,
    return_aux=None, scale=None, window_size=(-1, -1))` and `is_causal = window_size == (-1, 0)`: the scale and the
    causal window exist, `enable_gqa` does not (2.13 added it). longalign/attention.py reads the signature and
    repeats the KV heads for it (ChatGLM3: 2 groups -> 32 heads); the varlen rows measure that as it is.
    tests/fake_kernels.py has this exact signature ("2.11"), and tests/test_bench_gpu.py runs the smoke run on it.
  * torch 2.11 torch/nn/functional.py: `scaled_dot_product_attention(..., is_causal=False, scale=None,
    enable_gqa=False)`; torch/cuda/memory.py: `reset_peak_memory_stats`, `memory_allocated`, `max_memory_allocated`;
    torch.cuda.Event(enable_timing=True), torch.utils._python_dispatch.TorchDispatchMode: long-standing.
  * transformers 5.17 modeling_outputs.py: CausalLMOutputWithPast's cache field is `past_key_values` (5.24: `cache`):
    longalign.attention.lm_output fills the one that exists (without it our models fail there with a TypeError).
  * transformers 5.17 modeling_utils.py: `gradient_checkpointing_enable(gradient_checkpointing_kwargs=None,
    every_n_layers=1, offload=False)` exists, `activation_checkpointing_enable` (5.24's name, whose
    gradient_checkpointing_enable is a deprecated alias) does not: `checkpointing_on` takes whichever exists;
    `set_attn_implementation(attn_implementation, ...)` exists.
  * transformers 5.17 masking_utils.py `_preprocess_mask_arguments`: packed sequences are found from position_ids
    only `if position_ids is not None and attention_mask is None and past_key_values is None`: the stock call passes
    use_cache=False (with a cache it silently attends across sequences); loss/loss_utils.py `ForCausalLMLoss(logits,
    labels, vocab_size, ...)` starts with `logits = logits.float()`; utils/import_utils.py
    `is_flash_attn_2_available()` decides the flash_attention_2 row.
"""

import contextlib
import copy
import dataclasses
import gc
import inspect
import json
import math
import os
import platform
import signal
import statistics
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from longalign import IGNORE_INDEX, packing
from longalign import attention as A
from longalign.loss import causal_lm_loss
from longalign.scriptargs import UserError, comma_list, parse_args, run_main
from modeling_chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration
from modeling_llama import LlamaForCausalLM


@dataclass
class Args:
    output_file: str = field(default="runs/bench_gpu/results.json", metadata={
        "help": "the JSON of every figure (--out works too); rewritten after each stage"})
    smoke: bool = field(default=False, metadata={
        "help": "tiny shapes (hidden 64, packs of 64-256 tokens) on any device: the whole script in seconds"})
    layers: int = field(default=8, metadata={
        "help": "decoder layers of the Llama-2-7B-shaped model of train_* (--smoke: 2)"})
    repeats: int = field(default=3, metadata={"help": "timed repeats per figure after one warm-up (median; --smoke: 1)"})
    time_budget: float = field(default=0, metadata={
        "help": "seconds for all stages (0: 300 for the full run, 100 with --smoke); a stage that would start "
                "later is recorded as skipped"})
    stages: str = field(default="", metadata={"help": "comma-separated subset of the stages to run (default all)"})
    seed: int = field(default=0, metadata={"help": "seed of lengths, tokens and weights"})


# ---------------------------------------------------------------------------------------------
# Shapes. The smoke run keeps every stage and shrinks every size: tokens / 256, widths to 64, 2 layers, 1 repeat.

FULL = {"llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                      num_key_value_heads=32, rms_norm_eps=1e-5),
        "chatglm": dict(padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
                        num_attention_heads=32, multi_query_group_num=2),
        "matmul": 8192, "scale": 1}
SMOKE = {"llama": dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_attention_heads=4,
                       num_key_value_heads=4, rms_norm_eps=1e-5),
         "chatglm": dict(padded_vocab_size=1024, hidden_size=64, ffn_hidden_size=160, kv_channels=16,
                         num_attention_heads=4, multi_query_group_num=2),
         "matmul": 128, "scale": 256}
SHAPE_NAMES = {"llama": "Llama-2-7B", "chatglm": "ChatGLM3-6B"}
PACKS = {"train_64k": 65536, "train_32k": 32768, "train_16k": 16384}
PARITY_TOKENS, PARITY_SEQUENCES, LOSS_TOKENS = 16384, 20, 65536
# time box of each stage in seconds (the full run's; --smoke divides by 4), cut to what --time_budget leaves
BOXES = {"env": 30, "matmul": 30, "attention_parity": 60, "model_parity": 90, "loss_memory_64k": 60,
         "train_64k": 150, "train_32k": 90, "train_16k": 60, "qwen3_step": 5}
STAGES = tuple(BOXES)
GOALS = {"parity": 2e-2, "tokens_per_s_ratio": 1.2, "peak_memory_ratio": 0.7, "mfu": 0.45}


def llama_config(shape: dict, layers: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(**shape["llama"], num_hidden_layers=layers, max_position_embeddings=65536,
                                    use_cache=False, tie_word_embeddings=False, attn_implementation="sdpa")


def chatglm_config(shape: dict, layers: int) -> ChatGLMConfig:
    # ChatGLM3-6B's layout (multi-query groups, bias on QKV only) with LongAlign-6B-64k's rope_ratio
    return ChatGLMConfig(**shape["chatglm"], num_layers=layers, multi_query_attention=True, add_qkv_bias=True,
                         rope_ratio=200, seq_length=65536, use_cache=False)


def build(cls, config, device, dtype=torch.bfloat16):
    """A randomly initialised model made directly on `device` in `dtype`, as from_pretrained(dtype=) makes it
    (buffers computed in fp32, such as RoPE's inv_freq, stay fp32)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(config)
    finally:
        torch.set_default_dtype(saved)


def checkpointing_on(model) -> None:
    """Activation checkpointing under transformers 5.24 (activation_checkpointing_enable) and 5.17 (only
    gradient_checkpointing_enable, which 5.24 keeps as a deprecated alias)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()


def matmul_params(model) -> int:
    """N of 6 * N * T: every 2-D weight but the embedding (a lookup, not a matmul)."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p.ndim == 2 and p is not embedding)


def step_flops(n_params: int, lengths: list[int], n_layers: int, d_attn: int) -> float:
    """F = 6 * N * T + 6 * n_layers * d_attn * sum_i l_i^2 (see the top)."""
    return 6.0 * n_params * sum(lengths) + 6.0 * n_layers * d_attn * sum(float(n) ** 2 for n in lengths)


# ---------------------------------------------------------------------------------------------
# Packs


def make_pack(tokens: int, scale: int, seed: int, sequences: int | None = None) -> list[int]:
    """Sequence lengths of one pack of `tokens * scale` tokens from a LongAlign-shaped mix at L = that size
    (longalign/packing.py), divided by `scale` and topped up with one more sequence to exactly `tokens`.

    The pack is one of those best-fit-decreasing fills to >= 95 %: the one whose sequence count is the median
    (training steps) or nearest to `sequences` (parity's ~20)."""
    L = tokens * scale
    lengths = packing.longalign_shaped_lengths(L, num_long=1000, num_short=3000, seed=seed)
    packs = packing.best_fit_decreasing(lengths, L)
    full = [p for p in packs if lengths[p].sum() >= 0.95 * L] or packs
    target = statistics.median_low(len(p) for p in full) if sequences is None else sequences
    pack = min(full, key=lambda p: abs(len(p) - target))
    out = [max(1, round(int(lengths[i]) / scale)) for i in pack]
    while sum(out) > tokens:                       # rounding up overshot: trim the longest
        out[out.index(max(out))] -= sum(out) - tokens
    if sum(out) < tokens:
        out.append(tokens - sum(out))
    return out


def pack_batch(lengths: list[int], vocab: int, device, seed: int) -> dict:
    """ids, cu_seqlens, position_ids, labels (a sequence's first token is no target) and loss weights 1 / (M * N_i)."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    ids = torch.randint(0, vocab, (1, T), generator=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    starts = cu[:-1].long()
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[0, starts] = IGNORE_INDEX
    n_targets = torch.tensor([n - 1 for n in lengths], dtype=torch.float64)            # N_i
    M = int((n_targets > 0).sum())
    per_seq = torch.where(n_targets > 0, 1.0 / (M * n_targets.clamp(min=1)), torch.zeros_like(n_targets))
    weights = torch.repeat_interleave(per_seq, torch.tensor(lengths))[None].float()
    weights[labels == IGNORE_INDEX] = 0.0
    batch = {"input_ids": ids, "cu_seqlens": cu, "position_ids": position_ids, "labels": labels,
             "loss_weights": weights}
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Measuring: time, peak memory, differences


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CpuPeakMemory(TorchDispatchMode):
    """CPU stand-in for torch.cuda.max_memory_allocated: the peak of the bytes held by the tensor storages created
    while it is active, each counted until its storage is freed (weakref finalizers on the storages)."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self.live = set()

    def _free(self, key, nbytes):
        self.live.discard(key)
        self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.live:
                    self.live.add(key)
                    self.now += nbytes
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


@contextlib.contextmanager
def peak_memory(device):
    """Yields a dict whose "bytes" is, on exit, the peak allocation above what was allocated on entry."""
    result = {"bytes": 0}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        sync(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - before
    else:
        with CpuPeakMemory() as tracker:
            yield result
        result["bytes"] = tracker.peak


def free_memory(device) -> None:
    """Give the freed blocks back to the device between stages (on CPU: nothing to do, and gc costs 0.3 s)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def differences(got: list, ref: list) -> dict:
    """max |d| over all tensors, relative norm error over all of them, and the worst tensor's relative error."""
    max_abs, d2, r2, worst = 0.0, 0.0, 0.0, 0.0
    for g, r in zip(got, ref, strict=True):
        d = g.float() - r.float()
        max_abs = max(max_abs, float(d.abs().max()))
        dn, rn = float(d.norm()) ** 2, float(r.float().norm()) ** 2
        d2, r2 = d2 + dn, r2 + rn
        worst = max(worst, math.sqrt(dn / rn) if rn > 0 else (0.0 if dn == 0 else math.inf))
    return {"max_abs": max_abs, "rel": math.sqrt(d2 / r2) if r2 > 0 else math.inf, "rel_worst": worst}


@contextlib.contextmanager
def use_backend(backend: A.Backend):
    """Route longalign/attention.py through one backend (as select_backend would have chosen it)."""
    saved, A._backend = A._backend, backend
    try:
        yield
    finally:
        A._backend = saved


def attention_parts(model, key: str):
    """Layer 0's attention module and the model's rotary embedding (position ids -> cos, sin)."""
    if key == "llama":
        return model.model.layers[0].self_attn, model.model.rotary_emb
    return model.transformer.encoder.layers[0].self_attention, model.transformer.rotary_pos_emb


def short_name(backend: A.Backend) -> str:
    if backend.kernel is None:
        return "sdpa per sequence"
    return "flash-attn varlen" if backend.name.startswith("flash-attn") else "torch varlen_attn"


# ---------------------------------------------------------------------------------------------
# The run: stages, their guards and time boxes, the JSON


class StageTimeout(BaseException):
    """A stage ran past its time box. A BaseException, so the per-row guards (except Exception) let it through."""


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()[:300]}"


class Run:
    def __init__(self, args: Args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.shape = SMOKE if args.smoke else FULL
        self.scale = self.shape["scale"]
        self.repeats = 1 if args.smoke else args.repeats
        budget = args.time_budget or (100 if args.smoke else 300)
        self.deadline = time.monotonic() + budget
        self.stage_deadline = self.deadline
        self.selected = comma_list(args.stages, str, "stages") if args.stages else list(STAGES)
        unknown = sorted(set(self.selected) - set(STAGES))
        if unknown:
            raise UserError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        self.path = Path(args.output_file)
        self.cache: dict = {}      # models shared between stages
        self.backends: list[A.Backend] = []
        self.results = {"meta": {"args": dataclasses.asdict(args), "device": str(self.device),
                                 "time_budget_s": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                 "flops_formula": "6 * N * T + 6 * n_layers * d_attn * sum_i l_i^2"},
                        "stages": {}, "goals": {}}

    def time_left(self) -> float:
        return self.stage_deadline - time.monotonic()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def stage(self, name: str, fn) -> None:
        """Run fn(record) inside a guard and a time box; whatever it put into the record before failing stays."""
        rec, t0 = {"status": "skipped"}, time.monotonic()
        left = self.deadline - t0
        if name not in self.selected:
            rec["why"] = "not in --stages"
        elif left < 5:
            rec["why"] = "the run's --time_budget was spent"
        else:
            box = min(BOXES[name] / (4 if self.args.smoke else 1), left)
            rec = self.results["stages"][name] = {"status": "running", "time_box_s": round(box, 1)}
            self.write()
            self.stage_deadline = t0 + box
            alarm = threading.current_thread() is threading.main_thread()
            if alarm:
                def on_alarm(signum, frame):
                    raise StageTimeout(f"{name} ran past its {box:.0f} s time box")
                previous = signal.signal(signal.SIGALRM, on_alarm)
                signal.setitimer(signal.ITIMER_REAL, box)
            try:
                try:
                    fn(rec)
                    rec["status"] = "ok"
                finally:  # the timer stops before anything is handled; an alarm before this line still lands below
                    if alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except StageTimeout as e:
                rec.update(status="timeout", error=str(e))
            except Exception as e:
                rec.update(status="error", error=error_text(e), traceback=traceback.format_exc(limit=-4)[-2000:])
            finally:
                if alarm:
                    signal.signal(signal.SIGALRM, previous)
                self.stage_deadline = self.deadline
            free_memory(self.device)
            rec["seconds"] = round(time.monotonic() - t0, 2)
        self.results["stages"][name] = rec
        self.write()
        took = f" in {rec['seconds']:.1f} s" if "seconds" in rec else ""
        print(f"[stage] {name}: {rec['status']}{took}"
              + (f" ({rec.get('error') or rec.get('why')})" if rec["status"] != "ok" else ""), flush=True)

    def guard(self, fn) -> dict:
        """fn()'s dict, or {"error": ...} when it raises (an OOM, say): the stage goes on with its next row."""
        try:
            return fn()
        except Exception as e:
            error = error_text(e)
        free_memory(self.device)   # here, not in the except clause, whose traceback still holds the step's tensors
        return {"error": error}

    def row(self, rows: list, row: dict, fn) -> None:
        rows.append(row)           # first, so that a time-out leaves the row's name in the JSON
        row.update(self.guard(fn))

    # -----------------------------------------------------------------------------------------
    # Stages

    def env(self, rec: dict) -> None:
        import numpy

        rec.update(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                   transformers=transformers.__version__, numpy=numpy.__version__,
                   float32_matmul_precision=torch.get_float32_matmul_precision(),
                   PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
        if self.device.type == "cuda":
            p = torch.cuda.get_device_properties(self.device)
            rec.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                       multiprocessors=p.multi_processor_count)
        try:
            from torch.nn.attention.varlen import varlen_attn
            rec["varlen_attn_signature"] = str(inspect.signature(varlen_attn))
        except ImportError as e:
            rec["varlen_attn_signature"] = f"absent ({e})"
        from transformers.utils import is_flash_attn_2_available

        rec["transformers_flash_attention_2"] = bool(is_flash_attn_2_available())
        self.backends, why = A.available_backends(self.device.type)
        rec["backends"] = [b.name for b in self.backends]
        rec["backends_unavailable"] = why

    def matmul(self, rec: dict) -> None:
        n = self.shape["matmul"]
        g = torch.Generator(device=self.device).manual_seed(self.args.seed)
        pairs = [(torch.randn(n, n, device=self.device, generator=g, dtype=torch.bfloat16),
                  torch.randn(n, n, device=self.device, generator=g, dtype=torch.bfloat16)) for _ in range(2)]
        out = torch.empty(n, n, device=self.device, dtype=torch.bfloat16)
        for a, b in pairs * 2:                                   # warm-up: cuBLAS handles and heuristics
            torch.mm(a, b, out=out)
        times = []
        for i in range(10):
            a, b = pairs[i % 2]
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.mm(a, b, out=out)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        rec.update(n=n, dtype="bf16", seconds=seconds, tflops=2 * n**3 / seconds / 1e12)

    def parity_models(self) -> dict:
        """2-layer bf16 models of each shape with an fp32 copy (same, bf16-rounded weights), built once."""
        if "parity" not in self.cache:
            models = {}
            torch.manual_seed(self.args.seed)
            for key, cls, config in (("llama", LlamaForCausalLM, llama_config(self.shape, 2)),
                                     ("chatglm", ChatGLMForConditionalGeneration, chatglm_config(self.shape, 2))):
                model = build(cls, config, self.device)
                models[key] = (model, copy.deepcopy(model).float())
            self.cache["parity"] = models
        return self.cache["parity"]

    def attention_parity(self, rec: dict) -> None:
        lengths = make_pack(PARITY_TOKENS // self.scale, self.scale, self.args.seed, PARITY_SEQUENCES)
        rec["pack"] = {"tokens": sum(lengths), "sequences": len(lengths), "lengths": lengths}
        rows = rec["rows"] = []
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(self.args.seed)
        for key, (model, ref_model) in self.parity_models().items():
            C = model.config.hidden_size
            x = torch.randn(1, sum(lengths), C, device=self.device, generator=g)             # fp32 masters
            grad_out = torch.randn(1, sum(lengths), C, device=self.device, generator=g)

            def run(m, dtype, key=key, x=x, grad_out=grad_out):
                """One forward + backward of layer 0's attention -> (output, [grad of input, grads of weights])."""
                module, rotary = attention_parts(m, key)
                module.zero_grad(set_to_none=True)
                xi = x.detach().to(dtype).requires_grad_()                                          # (1, T, C)
                layout, position_ids = A.prepare_positions(xi, cu)
                out = module(xi, rotary(xi, position_ids), layout=layout)
                out.backward(grad_out.to(dtype))
                return out.detach(), [xi.grad] + [p.grad for p in module.parameters()]

            ref_out, ref_grads = run(ref_model, torch.float32)      # fp32 never takes a kernel: exact SDPA
            for backend in self.backends:
                def measure(model=model, backend=backend, run=run, ref_out=ref_out, ref_grads=ref_grads):
                    with use_backend(backend):
                        out, grads = run(model, torch.bfloat16)
                        o, gr = differences([out], [ref_out]), differences(grads, ref_grads)
                        times = []
                        for _ in range(self.repeats):
                            sync(self.device)
                            t0 = time.perf_counter()
                            run(model, torch.bfloat16)
                            sync(self.device)
                            times.append(time.perf_counter() - t0)
                    return {"out_max_abs": o["max_abs"], "out_rel": o["rel"], "grad_max_abs": gr["max_abs"],
                            "grad_rel": gr["rel"], "grad_rel_worst": gr["rel_worst"],
                            "ms_fwd_bwd": 1e3 * statistics.median(times)}
                self.row(rows, {"shape": SHAPE_NAMES[key], "kv_heads": model.config.num_key_value_heads,
                                "backend": short_name(backend)}, measure)

    def model_parity(self, rec: dict) -> None:
        rows = rec["rows"] = []
        lengths = make_pack(PARITY_TOKENS // self.scale, self.scale, self.args.seed, PARITY_SEQUENCES)
        rec["pack"] = {"tokens": sum(lengths), "sequences": len(lengths)}
        rec["layers"] = 2
        for key, (model, ref_model) in self.parity_models().items():
            batch = pack_batch(lengths, model.config.vocab_size, self.device, self.args.seed)
            kwargs = {k: batch[k] for k in ("input_ids", "cu_seqlens", "labels", "loss_weights")}

            def run(m, kwargs=kwargs):
                m.zero_grad(set_to_none=True)
                loss = m(**kwargs).loss
                loss.backward()
                return loss.detach().item(), [p.grad for p in m.parameters()]

            ref_model.train()
            ref_loss, ref_grads = run(ref_model)
            checkpointing_on(model)
            for backend in self.backends:
                def measure(model=model, backend=backend, run=run, ref_loss=ref_loss, ref_grads=ref_grads):
                    with use_backend(backend):
                        loss, grads = run(model)
                    gr = differences(grads, ref_grads)
                    return {"loss": loss, "loss_fp32": ref_loss, "loss_abs_diff": abs(loss - ref_loss),
                            "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss), "grad_max_abs": gr["max_abs"],
                            "grad_rel": gr["rel"], "grad_rel_worst": gr["rel_worst"]}
                self.row(rows, {"shape": SHAPE_NAMES[key] + " 2 layers", "backend": short_name(backend)}, measure)
            model.zero_grad(set_to_none=True)
            ref_model.zero_grad(set_to_none=True)
        self.cache.pop("parity", None)                              # room for the training steps

    def loss_memory(self, rec: dict) -> None:
        from transformers.loss.loss_utils import ForCausalLMLoss

        self.cache.pop("parity", None)
        T = LOSS_TOKENS // self.scale
        lengths = make_pack(T, self.scale, self.args.seed)
        rec.update(tokens=T, sequences=len(lengths))
        rows = rec["rows"] = []
        C = self.shape["llama"]["hidden_size"]
        g = torch.Generator(device=self.device).manual_seed(self.args.seed)
        for vocab in (self.shape["llama"]["vocab_size"], self.shape["chatglm"]["padded_vocab_size"]):
            batch = pack_batch(lengths, vocab, self.device, self.args.seed)
            hidden = torch.randn(1, T, C, device=self.device, generator=g, dtype=torch.bfloat16).requires_grad_()
            weight = (0.02 * torch.randn(vocab, C, device=self.device, generator=g)).to(torch.bfloat16).requires_grad_()

            def ours(hidden=hidden, weight=weight, batch=batch):
                return causal_lm_loss(hidden, weight, batch["labels"], batch["loss_weights"], batch["cu_seqlens"])

            def theirs(hidden=hidden, weight=weight, batch=batch, vocab=vocab):
                logits = torch.nn.functional.linear(hidden, weight)                          # (1, T, V) bf16
                return ForCausalLMLoss(logits, batch["labels"], vocab_size=vocab)

            row = {"vocab": vocab, "tokens": T}
            rows.append(row)
            for name, fn in (("ours", ours), ("transformers", theirs)):
                def measure(fn=fn, hidden=hidden, weight=weight):
                    hidden.grad = weight.grad = None
                    with peak_memory(self.device) as peak:
                        sync(self.device)
                        t0 = time.perf_counter()
                        fn().backward()
                        sync(self.device)
                        seconds = time.perf_counter() - t0
                    return {"peak_gb": peak["bytes"] / 1e9, "seconds": seconds}
                row[name] = self.guard(measure)
            if "peak_gb" in row["ours"] and "peak_gb" in row["transformers"]:
                row["peak_ratio"] = row["ours"]["peak_gb"] / row["transformers"]["peak_gb"]
            del hidden, weight
            free_memory(self.device)

    def train_models(self) -> dict:
        """Ours and stock transformers' LlamaForCausalLM (sdpa) with the same weights, checkpointing on, built once."""
        if "train" not in self.cache:
            self.cache.pop("parity", None)
            free_memory(self.device)
            torch.manual_seed(self.args.seed)
            config = llama_config(self.shape, 2 if self.args.smoke else self.args.layers)
            ours = build(LlamaForCausalLM, config, self.device)
            stock = build(transformers.LlamaForCausalLM, config, self.device)
            stock.load_state_dict(ours.state_dict())
            for m in (ours, stock):
                checkpointing_on(m)
            self.cache["train"] = {"ours": ours, "stock": stock}
        return self.cache["train"]

    def train_step(self, model, kwargs: dict) -> tuple[float, int, float]:
        """(seconds, peak bytes above the resident weights, loss) of one forward + backward."""
        model.zero_grad(set_to_none=True)
        with peak_memory(self.device) as peak:
            sync(self.device)
            t0 = time.perf_counter()
            loss = model(**kwargs).loss
            loss.backward()
            sync(self.device)
            seconds = time.perf_counter() - t0
        return seconds, peak["bytes"], loss.detach().item()

    def timed_steps(self, model, kwargs: dict, warmup_kwargs: dict, flops: float, peak_tflops: float | None) -> dict:
        """One warm-up step, then up to --repeats timed ones while the stage's time box allows (when it allows
        none, the warm-up's figures are reported, marked steps_timed 0)."""
        t_warm, warm_peak, warm_loss = self.train_step(model, warmup_kwargs)
        times, peaks, loss = [], [], None
        for _ in range(self.repeats):
            if self.time_left() < 2 * max(times or [t_warm]) + 5:
                break
            seconds, nbytes, loss = self.train_step(model, kwargs)
            times.append(seconds)
            peaks.append(nbytes)
        steps_timed = len(times)
        if not times:
            times, peaks = [t_warm], [warm_peak]
        model.zero_grad(set_to_none=True)
        step = statistics.median(times)
        tokens = kwargs["input_ids"].shape[1]
        return {"step_s": step, "steps_timed": steps_timed, "warmup_s": t_warm, "tokens_per_s": tokens / step,
                "mfu": flops / step / (peak_tflops * 1e12) if peak_tflops else None,
                "peak_gb": (param_bytes(model) + max(peaks)) / 1e9, "step_peak_gb": max(peaks) / 1e9,
                "loss": loss, "loss_token_mean": warm_loss}

    def train(self, rec: dict, name: str) -> None:
        T = PACKS[name] // self.scale
        lengths = make_pack(T, self.scale, self.args.seed)
        models = self.train_models()
        ours, stock = models["ours"], models["stock"]
        config = ours.config
        d_attn = config.num_attention_heads * (getattr(config, "head_dim", None)
                                               or config.hidden_size // config.num_attention_heads)
        n_params = matmul_params(ours)
        flops = step_flops(n_params, lengths, config.num_hidden_layers, d_attn)
        peak = self.results["stages"].get("matmul", {}).get("tflops")
        rec.update(tokens=T, sequences=len(lengths), lengths=lengths, layers=config.num_hidden_layers,
                   matmul_params=n_params, flops=flops, matmul_tflops=peak)
        batch = pack_batch(lengths, config.vocab_size, self.device, self.args.seed)
        rows = rec["rows"] = []
        backend = self.backends[0] if self.backends else A.Backend(A._SDPA_NAME)
        ours_kwargs = {k: batch[k] for k in ("input_ids", "cu_seqlens", "labels", "loss_weights")}
        # the warm-up step without loss weights: its token-mean loss is what stock transformers computes
        ours_warmup = {k: batch[k] for k in ("input_ids", "cu_seqlens", "labels")}
        stock_kwargs = {k: batch[k] for k in ("input_ids", "position_ids", "labels")} | {"use_cache": False}
        with use_backend(backend):
            self.row(rows, {"impl": "ours", "attention": short_name(backend)},
                     lambda: self.timed_steps(ours, ours_kwargs, ours_warmup, flops, peak))
        impls = ["sdpa"]
        from transformers.utils import is_flash_attn_2_available
        if is_flash_attn_2_available():
            impls.append("flash_attention_2")
        for impl in impls:
            def measure(impl=impl):
                stock.set_attn_implementation(impl)
                return self.timed_steps(stock, stock_kwargs, stock_kwargs, flops, peak)
            self.row(rows, {"impl": f"transformers {impl}", "attention": f"{impl}, position_ids packing"}, measure)
        stock.set_attn_implementation("sdpa")
        mine = rows[0]
        rec["ratios"] = {}
        for theirs in rows[1:]:
            if "tokens_per_s" in mine and "tokens_per_s" in theirs:
                rec["ratios"][theirs["impl"]] = {
                    "tokens_per_s": mine["tokens_per_s"] / theirs["tokens_per_s"],
                    "peak_memory": mine["peak_gb"] / theirs["peak_gb"],
                    "loss_token_mean_abs_diff": abs(mine["loss_token_mean"] - theirs["loss_token_mean"])}

    # -----------------------------------------------------------------------------------------

    def goals(self) -> dict:
        """The issue's goals, each with the number measured (None where its stage did not measure it)."""
        st = self.results["stages"]
        parity = [r.get("grad_rel_worst") for s in ("attention_parity", "model_parity")
                  for r in st.get(s, {}).get("rows", []) if "grad_rel_worst" in r]
        big = st.get("train_64k", {})
        ratio = big.get("ratios", {}).get("transformers sdpa", {})
        ours = next((r for r in big.get("rows", []) if r.get("impl") == "ours"), {})
        found = {"parity": max(parity) if parity else None, "tokens_per_s_ratio": ratio.get("tokens_per_s"),
                 "peak_memory_ratio": ratio.get("peak_memory"), "mfu": ours.get("mfu")}
        text = {"parity": "worst relative gradient error of any parity row <= 2e-2",
                "tokens_per_s_ratio": "64k: ours / transformers sdpa tokens/s >= 1.2",
                "peak_memory_ratio": "64k: ours / transformers sdpa peak memory <= 0.7",
                "mfu": "64k: our MFU >= 45 %"}
        out = {}
        for key, value in found.items():
            lower_is_better = key in ("parity", "peak_memory_ratio")
            met = None if value is None else (value <= GOALS[key] if lower_is_better else value >= GOALS[key])
            out[key] = {"goal": text[key], "value": value, "met": met}
        return out

    def main(self) -> dict:
        print(f"[bench_gpu] {'smoke' if self.args.smoke else 'full'} run on {self.device}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}; JSON: {self.path}", flush=True)
        self.stage("env", self.env)
        if not self.backends:  # env skipped or failed: still measure the backends that run
            self.backends = A.available_backends(self.device.type)[0]
        for name in STAGES[1:]:
            if name in PACKS:
                self.stage(name, lambda rec, name=name: self.train(rec, name))
            elif name == "qwen3_step":
                self.results["stages"][name] = {"status": "skipped", "why": "the generic any-model path (issue 19) "
                                                "is not in this branch"}
            else:
                self.stage(name, getattr(self, name.removesuffix("_64k")))
        self.cache.clear()
        self.results["goals"] = self.goals()
        self.results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.write()
        print(table(self.results))
        return self.results


# ---------------------------------------------------------------------------------------------
# The table (also rebuilt from a JSON: python -c "import json, bench_gpu; print(bench_gpu.table(json.load(...)))")


def _e(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def _gb(x) -> str:
    return "-" if x is None else f"{x:.1f} GB" if x >= 0.1 else f"{1e3 * x:.2f} MB"


def table(results: dict) -> str:
    st = results["stages"]
    lines = []

    def add(stage, case, result):
        lines.append((stage, case, result))

    env = st.get("env", {})
    add("env", env.get("gpu", results["meta"]["device"]),
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, transformers {env.get('transformers')}")
    for name, rec in st.items():
        if rec.get("status") != "ok" and not rec.get("rows"):
            add(name, rec.get("status", "?"), rec.get("error") or rec.get("why", ""))
            continue
        if name == "matmul":
            add(name, f"{rec['n']}^3 bf16", f"{rec['tflops']:.1f} TFLOP/s")
        for r in rec.get("rows", []):
            if "error" in r:
                add(name, " | ".join(str(r.get(k, "")) for k in ("shape", "impl", "backend", "vocab") if k in r),
                    r["error"][:90])
            elif name == "attention_parity":
                add(name, f"{r['shape']} | {r['backend']}", f"out max|d| {_e(r['out_max_abs'])} rel {_e(r['out_rel'])}"
                    f" | grad max|d| {_e(r['grad_max_abs'])} rel {_e(r['grad_rel'])} worst {_e(r['grad_rel_worst'])}"
                    f" | {r['ms_fwd_bwd']:.1f} ms")
            elif name == "model_parity":
                add(name, f"{r['shape']} | {r['backend']}", f"loss {r['loss']:.4f} vs fp32 {r['loss_fp32']:.4f} "
                    f"(rel {_e(r['loss_rel_diff'])}) | grad max|d| {_e(r['grad_max_abs'])} rel {_e(r['grad_rel'])} "
                    f"worst {_e(r['grad_rel_worst'])}")
            elif name == "loss_memory_64k":
                mine, theirs = r.get("ours", {}), r.get("transformers", {})
                add(name, f"{r['tokens']} tokens, vocab {r['vocab']}",
                    f"peak ours {_gb(mine.get('peak_gb'))} / transformers {_gb(theirs.get('peak_gb'))}"
                    + (f" = {r['peak_ratio']:.2f}x" if "peak_ratio" in r
                       else f" ({(mine.get('error') or theirs.get('error', ''))[:70]})"))
            elif name in PACKS:
                mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f} %"
                ratio = rec.get("ratios", {}).get(r["impl"])
                vs = (f" | ours/theirs {ratio['tokens_per_s']:.2f}x tok/s, {ratio['peak_memory']:.2f}x memory"
                      if ratio else "")
                add(name, f"{rec['tokens']} tok, {rec['sequences']} seq, {rec['layers']} L | {r['impl']}",
                    f"{r['tokens_per_s']:,.0f} tok/s, MFU {mfu}, peak {_gb(r['peak_gb'])}{vs}")
        if rec.get("status") not in ("ok", None) and rec.get("rows"):
            add(name, rec["status"], rec.get("error", ""))
    for goal in results.get("goals", {}).values():
        value = "-" if goal["value"] is None else f"{goal['value']:.3g}"
        add("goal", goal["goal"], f"{value}: {'met' if goal['met'] else 'not met' if goal['met'] is False else '-'}")
    w0, w1 = (max(len(line[i]) for line in lines) for i in (0, 1))
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in lines)


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((Args,), a, doc=__doc__), argv)  # bad flags: one line, exit 2

    def go(_):
        if not args.smoke and not torch.cuda.is_available():
            raise UserError("the full run needs a CUDA GPU; on this machine use --smoke (tiny shapes, seconds).")
        return Run(args).main()

    return run_main(go, None)


if __name__ == "__main__":
    main()
