"""Packed attention for the model files: one entry point, three backends, chosen once per process.

A packed row (batch size 1) holds several sequences back to back. `cu_seqlens` marks where each one
starts; attention is causal inside a sequence and never crosses a boundary (block-diagonal):

    tokens        a0 a1 a2 | b0 b1 | c0 c1 c2 c3 | p  p        (p = padding tail of the pack)
    cu_seqlens    [0,        3,      5,            9]           int32, strictly increasing
    segments      [0, 3, 5, 9, 11]                              the tail becomes one segment of its own
    position_ids  0  1  2    0  1    0  1  2  3    0  1         reset at every sequence start

RoPE is relative, so resetting positions gives each sequence exactly the attention it has alone.

Backends for a packed row, the first that works is taken (`select_backend`, printed once as
`[attention] backend: ...`):
  1. flash-attn's `flash_attn_varlen_func` (FlashAttention-2, the paper's kernel) when the package imports
     AND a tiny probe call runs and agrees with SDPA: a build against another torch (an ImportError of its
     .so at import, or a failing call) falls back with one warning;
  2. PyTorch's own `torch.nn.attention.varlen.varlen_attn` (same FlashAttention-2 code, shipped with
     recent torch, 2.13 here, for CUDA; its keyword arguments are read from its signature, so a torch that
     spells them differently is still used, and one that lacks it or a softmax scale falls through to 3);
  3. one `scaled_dot_product_attention(is_causal=True)` call per sequence: exact, any device and dtype,
     never a T x T mask (cost grows with sum(l_i^2), not T^2).
The kernels take fp16/bf16 tensors on the device they were chosen for; anything else (fp32, CPU) goes
to 3 for that call. Grouped-query / multi-query attention (fewer KV heads) never repeats k/v where the
backend takes them as they are (all three do on torch 2.13).

No host sync per layer: `prepare_positions` reads `cu_seqlens` to the host ONCE per forward (the
Python boundaries the SDPA path slices with, and `max_seqlen` for the kernels) and hands every layer a
`Layout`; the decode path (one new token after a KV cache) never reads a device value at all.
"""

import dataclasses
import inspect
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# What every layer needs about the row(s), worked out once per forward


@dataclasses.dataclass(frozen=True)
class Segments:
    """The sequences of a packed row: `cu_seqlens` on the activations' device (what the kernels read),
    the same boundaries as a Python list (what the SDPA fallback slices with) and the longest one."""

    cu_seqlens: torch.Tensor      # (n+1,) int32
    bounds: tuple[int, ...]       # cu_seqlens on the host
    max_seqlen: int


@dataclasses.dataclass(frozen=True)
class Layout:
    """One forward's attention pattern, shared by all layers.

    segments: a packed row (block-diagonal attention), or under sequence parallelism the FULL row's
    sequences (each rank holds a slice). attention_mask: (B, L) 1 = real token, over the cached and the new
    tokens; None when no token is padding. past: tokens in the KV cache before this forward (an int, or
    for a static cache the cache's own 0-dim counter); None = the queries are the last keys.
    """

    segments: Segments | None = None
    attention_mask: torch.Tensor | None = None
    past: int | torch.Tensor | None = None


def pack_segments(cu_seqlens: torch.Tensor, total: int | None = None, device=None) -> Segments:
    """Check `cu_seqlens` and return the Segments covering all `total` tokens (one host read).

    Accepts shape (n+1,) or (1, n+1). A padding tail (cu_seqlens[-1] < total) becomes one extra
    segment, so real tokens never attend to it (its labels are IGNORE_INDEX anyway). total=None: the
    boundaries already cover the row (sequence parallelism's full-row segments).
    """
    bounds = cu_seqlens.reshape(-1).tolist()                     # the one host read of the forward
    total = bounds[-1] if total is None and bounds else total
    if (len(bounds) < 2 or bounds[0] != 0 or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False))
            or bounds[-1] > total):
        raise ValueError(
            f"cu_seqlens must start at 0, increase strictly and end at most at the row length {total}; "
            f"got {bounds[:8]}{'...' if len(bounds) > 8 else ''}."
        )
    if bounds[-1] < total:
        bounds.append(total)
    device = cu_seqlens.device if device is None else device
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    return Segments(cu, tuple(bounds), max(b - a for a, b in zip(bounds, bounds[1:], strict=False)))


def position_ids_from_cu_seqlens(segments: Segments) -> torch.Tensor:
    """Segments -> (1, total) position ids that restart at 0 in every segment (no host sync)."""
    cu = segments.cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]                                            # (n,)
    total = segments.bounds[-1]
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)  # (total,) start of own segment
    return (torch.arange(total, device=cu.device) - starts).unsqueeze(0)


def prepare_positions(x: torch.Tensor, cu_seqlens=None, position_ids=None, cache=None, attention_mask=None,
                      row_cu_seqlens=None) -> tuple[Layout, torch.Tensor]:
    """The model's per-forward setup -> (Layout for every layer, position ids (B, T)).

    Packed row: segments from `cu_seqlens`, positions restarting per sequence. Sequence parallelism:
    `row_cu_seqlens` are the full row's segments (this rank holds a slice; shard_batch gives both).
    Otherwise positions count on from the tokens already in the KV cache. x: (B, T, C) input embeddings.
    """
    T = x.shape[1]
    if cu_seqlens is not None or row_cu_seqlens is not None:
        if cache is not None:
            raise ValueError("cu_seqlens (packed training) and a KV cache (generation) cannot be combined.")
        if cu_seqlens is not None:
            segments = pack_segments(cu_seqlens, T, x.device)                      # (n+1,) int32
            if position_ids is None:
                position_ids = position_ids_from_cu_seqlens(segments)             # (1, T)
        else:
            if position_ids is None:
                raise ValueError("row_cu_seqlens (sequence parallelism) needs this rank's position_ids too.")
            segments = pack_segments(row_cu_seqlens, None, x.device)
        return Layout(segments=segments), position_ids
    past = 0 if cache is None else cache.get_seq_length()
    if isinstance(past, torch.Tensor):  # a static cache's counter: it grows in place as layers write
        past = past.clone()
    if position_ids is None:
        position_ids = (torch.arange(T, device=x.device) + past)[None]               # (1, T), no host read
    if attention_mask is not None:
        if attention_mask.ndim != 2:
            raise ValueError("attention_mask must be the (batch, tokens) padding mask (1 = real token).")
        # Prefill or a plain forward: see once whether any token is padding, so that the usual case runs
        # without a (T, T) mask. Later steps (past > 0 or a static cache) keep the mask: no host read there.
        if isinstance(past, int) and past == 0 and bool(attention_mask.all()):
            attention_mask = None
    return Layout(attention_mask=attention_mask, past=past), position_ids


def keep_padding_mask(attention_mask=None, **kwargs):
    """Set as the model files' `create_masks_for_generate`: generate() turns the 2-D padding mask into
    transformers' 4-D masks for static caches; our attention builds its own masks from the 2-D one."""
    return attention_mask


def resolve_cache(model, cache, use_cache, packed_or_labels: bool):
    """The KV cache a forward uses: the caller's, a new DynamicCache for generation, or None.

    Training forwards (labels or a pack) and `use_cache=False` get none; an inference forward
    without a cache gets a fresh one (generate() then passes it back in).
    """
    if use_cache is None:
        use_cache = model.config.use_cache and not model.training
    if not use_cache:
        return None
    if cache is None and not packed_or_labels:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=model.config)
    return cache


def lm_output(loss, logits, cache):
    """The model files' return value, a CausalLMOutputWithPast. Its KV-cache field is `cache` in transformers
    5.24 and `past_key_values` in 5.17 (the GPU image's): fill whichever this version has."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{field: cache})


# ---------------------------------------------------------------------------------------------
# Backends: a varlen kernel is (q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, scale, window=None, softcap=None)
# -> out, with q, k, v (total, heads, D) and causal attention aligned to the LAST key of each sequence
# (FlashAttention-2's rule when a sequence has fewer queries than keys, which the decode path of the monkey
# patch relies on). window = w: a query sees itself and the w - 1 keys before it (transformers' `sliding_window`,
# FlashAttention's window_size=(w - 1, 0)); softcap = c: scores become c * tanh(score / c) (Gemma-2), flash-attn only.

Kernel = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    kernel: Kernel | None = None       # None: SDPA per sequence
    device_type: str | None = None     # the kernel takes tensors of this device type ...
    dtypes: tuple = HALF               # ... and these dtypes; anything else goes to SDPA
    softcap: bool = False              # the kernel takes `softcap` (flash-attn); SDPA and varlen_attn do not

    def takes(self, q: torch.Tensor) -> bool:
        return self.kernel is not None and q.device.type == self.device_type and q.dtype in self.dtypes


def _flash_attn() -> tuple[str, Kernel]:
    import flash_attn
    from flash_attn import flash_attn_varlen_func

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale, window=None, softcap=None):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True,
                                      window_size=(window - 1, 0) if window else (-1, -1), softcap=softcap or 0.0)

    return f"flash-attn {getattr(flash_attn, '__version__', '?')} flash_attn_varlen_func", kernel


def _torch_varlen() -> tuple[str, Kernel]:
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if "scale" not in params:
        raise TypeError(f"this torch's varlen_attn takes no softmax scale (signature {list(params)})")
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}  # a tuple: torch compares it with (-1, 0) to mean causal
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        raise TypeError(f"this torch's varlen_attn has no causal option (signature {list(params)})")
    gqa = "enable_gqa" in params

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale, window=None, softcap=None):
        if softcap:
            raise ValueError("torch's varlen_attn takes no softcap")
        extra = {"window_size": (window - 1, 0)} if window and "window_size" in params else {}
        if window and not extra:
            raise ValueError("this torch's varlen_attn takes no sliding window")
        if q.shape[1] != k.shape[1]:
            if gqa:
                extra["enable_gqa"] = True
            else:  # older signature: give it as many KV heads as query heads
                k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, **{**causal, **extra})

    return f"torch {torch.__version__} varlen_attn", kernel


def _probe(kernel: Kernel, device_type: str) -> None:
    """Run the kernel forward and backward on a tiny packed GQA row; raise unless it agrees with SDPA.

    Also checks the alignment rule above: one query per sequence (its last token) must see what that
    token sees in the packed call.
    """
    device = torch.device(device_type)
    with torch.inference_mode(False), torch.enable_grad():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, h, 16, 64, generator=g).to(device, torch.bfloat16).requires_grad_()
                   for h in (4, 2, 2))
        segs = pack_segments(torch.tensor([0, 5, 16], dtype=torch.int32), 16, device)
        out = _kernel_packed(kernel, q, k, v, segs, 0.125)
        out.float().square().sum().backward()
        out, grad = out.detach(), q.grad
        q, k, v = (x.detach() for x in (q, k, v))
        ref = _sdpa_per_segment(q.float(), k.float(), v.float(), segs.bounds, 0.125)
        last = torch.tensor([4, 15], device=device)
        q_last = q[0].transpose(0, 1)[last].contiguous()                  # (2, H, D)
        cu_q = torch.tensor([0, 1, 2], dtype=torch.int32, device=device)
        one = kernel(q_last, *(x[0].transpose(0, 1).contiguous() for x in (k, v)), cu_q, segs.cu_seqlens,
                     1, segs.max_seqlen, 0.125)
        err = max(float((out.float() - ref).abs().max()), float((one.float() - ref[0, last]).abs().max()))
        if not err <= 2e-2 or grad is None or not torch.isfinite(grad).all():
            raise RuntimeError(f"the probe call disagrees with SDPA (max |diff| {err:.2e}) or has no gradient")


_backend: Backend | None = None
_SDPA_NAME = "sdpa, one scaled_dot_product_attention call per packed sequence"


def _kernel_backends(device_type: str | None):
    """Yield (maker, Backend) for each kernel backend that imports and passes the probe, in order of preference,
    or (maker, the exception) for one that does not. Lazy: a caller that stops early probes no further."""
    for make in ((_flash_attn, _torch_varlen) if device_type else ()):
        try:
            name, kernel = make()
            _probe(kernel, device_type)
            yield make, Backend(name, kernel, device_type, softcap=make is _flash_attn)
        # A build against another torch fails in many ways: ImportError/OSError from its .so, a TypeError
        # from a changed signature, a RuntimeError from the call; every one of them means "not this one".
        except Exception as e:
            yield make, e


def _unavailable(make, e: Exception) -> str:
    return f"{make.__name__.strip('_')} unavailable ({type(e).__name__}: {str(e)[:200]})"


def select_backend(device_type: str | None = None) -> Backend:
    """Choose the packed-attention backend for this process, print it once and return it.

    device_type: where the kernels must run; default "cuda" when CUDA is available, else no kernel.
    (The tests pass "cpu" after putting fake kernels in place, so this very code runs on CPU.)
    """
    global _backend
    if device_type is None and torch.cuda.is_available():
        device_type = "cuda"
    chosen, why = None, []
    for make, found in _kernel_backends(device_type):
        if isinstance(found, Backend):
            chosen = found
            break
        why.append(_unavailable(make, found))
        not_installed = isinstance(found, ModuleNotFoundError) and found.name == "flash_attn"
        if make is _flash_attn and not not_installed:
            reason = f"{type(found).__name__}: {str(found)[:200]}"
            warnings.warn(f"flash-attn is installed but does not run here ({reason}); falling back to the "
                          "next attention backend. Reinstall it built for this torch "
                          f"({torch.__version__}), or uninstall it.", stacklevel=2)
    if chosen is None:
        chosen = Backend(_SDPA_NAME + (f" [{'; '.join(why)}]" if device_type else " [no CUDA]"))
    # tqdm.write: a line of its own even while a training or generation progress bar is drawn
    tqdm.write(f"[attention] backend: {chosen.name}", file=sys.stdout)
    _backend = chosen
    return chosen


def available_backends(device_type: str | None) -> tuple[list[Backend], list[str]]:
    """Every backend that runs on `device_type` (kernels that import and pass the probe, in select_backend's order,
    then SDPA) and why each other kernel does not; prints and warns nothing. For benchmarks that measure each one
    (bench/bench_gpu.py sets `_backend` to each in turn)."""
    found, why = [], []
    for make, backend in _kernel_backends(device_type):
        if isinstance(backend, Backend):
            found.append(backend)
        else:
            why.append(_unavailable(make, backend))
    return found + [Backend(_SDPA_NAME)], why


def current_backend() -> Backend:
    return _backend if _backend is not None else select_backend()


# ---------------------------------------------------------------------------------------------
# Attention


def _kernel_packed(kernel: Kernel, q, k, v, segments: Segments, scale: float, **window_softcap) -> torch.Tensor:
    # the kernels want (total, heads, D) with the packed tokens along dim 0 and a contiguous last dim
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (q, k, v))
    cu, m = segments.cu_seqlens, segments.max_seqlen
    extra = {key: value for key, value in window_softcap.items() if value}  # the usual call stays as it was
    return kernel(q, k, v, cu, cu, m, m, scale, **extra).unsqueeze(0)  # (1, T, H, D)


def _sdpa_per_segment(q, k, v, bounds, scale: float, window: int | None = None) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if window and e - s > window:  # the window bites: a band mask of this sequence only, (l_i, l_i)
            band = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).tril().triu(1 - window)
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], attn_mask=band,
                                                       scale=scale, enable_gqa=gqa))
        else:
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                       scale=scale, enable_gqa=gqa))  # (1, H, l_i, D)
    return torch.cat(outs, dim=2).transpose(1, 2)                        # (1, T, H, D)


def _dense(q, k, v, scale: float, attention_mask=None, past=None) -> torch.Tensor:
    """Ordinary causal attention for a (B, T) batch, optionally after `past` cached tokens.

    Query i sits in cache slot past + i and sees slots j <= past + i that are not padding. A mask is
    built only when needed: padding, several new tokens after a cache, or a static cache (its k/v hold
    every slot, the empty ones too). Generation's usual step, one new token after a dynamic cache without
    padding, and training's, no cache without padding, need none. Nothing here reads a device value.
    """
    tq, tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if past is None:
        past = tk - tq                                                   # the queries are the last keys
    last_keys = isinstance(past, int) and past + tq == tk
    if attention_mask is None and last_keys and tq == tk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    elif attention_mask is None and last_keys and tq == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    else:
        i = torch.arange(tq, device=q.device)[:, None]
        j = torch.arange(tk, device=q.device)[None, :]
        mask = (j <= i + past)[None, None]                               # (1, 1, Tq, Tk) causal
        if attention_mask is not None:
            m = attention_mask.bool()
            # over the cached + new tokens; a static cache's empty slots follow it (and are in the future)
            m = m[:, -tk:] if m.shape[1] >= tk else F.pad(m, (0, tk - m.shape[1]))
            mask = mask & m[:, None, None, :]                            # (B, 1, Tq, Tk)
            # a padding query sees nothing; let it see everything so softmax stays finite (its output
            # is never used)
            mask = mask | ~mask.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)                                           # (B, Tq, H, D)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              layout: Layout | None = None, window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """Causal attention; block-diagonal over `layout.segments` when given.

    q: (B, H, Tq, D); k, v: (B, H_kv, Tk, D) with H % H_kv == 0 (GQA/MQA). Returns (B, Tq, H, D).
    window, softcap (packed rows only; see the backends above): a ValueError where the backend cannot honour them.
    """
    layout = layout or Layout()
    if layout.segments is None:
        if softcap or (window and window < k.shape[2]):
            raise ValueError("a sliding window or softcapping needs a packed row (cu_seqlens), not padded rows")
        return _dense(q, k, v, scale, layout.attention_mask, layout.past)
    if q.shape[0] != 1:
        raise ValueError(f"a packed row has batch size 1, got {q.shape[0]}; concatenate sequences instead.")
    if layout.segments.bounds[-1] != q.shape[2]:
        raise ValueError(f"the segments cover {layout.segments.bounds[-1]} tokens but the row has {q.shape[2]} "
                         "(row_cu_seqlens are for sequence parallelism: longalign.sequence_parallel.enable).")
    if window and window >= layout.segments.max_seqlen:
        window = None                      # no sequence is longer than the window: plain causal attention
    backend = current_backend()
    if softcap and not (backend.takes(q) and backend.softcap):
        raise ValueError(f"attention softcapping needs flash-attn's kernel, not {backend.name} on {q.dtype} {q.device}")
    if backend.takes(q):
        return _kernel_packed(backend.kernel, q, k, v, layout.segments, scale, window=window, softcap=softcap)
    return _sdpa_per_segment(q, k, v, layout.segments.bounds, scale, window)


def causal_last_queries(q, k, v, scale: float) -> torch.Tensor:
    """Causal attention of B unpadded rows whose queries are the last keys (a prefill, or decoding with a
    dynamic KV cache) -> (B, Tq, H, D): through the kernel when one takes q, else SDPA. For the monkey patch."""
    backend = current_backend()
    if not backend.takes(q):
        return _dense(q, k, v, scale)
    (B, H, tq, D), tk = q.shape, k.shape[2]
    cu_q, cu_k = (torch.arange(0, (B + 1) * t, t, dtype=torch.int32, device=q.device) for t in (tq, tk))
    q, k, v = (x.transpose(1, 2).reshape(B * x.shape[2], x.shape[1], D) for x in (q, k, v))  # (B*T, heads, D)
    return backend.kernel(q, k, v, cu_q, cu_k, tq, tk, scale).view(B, tq, H, D)
