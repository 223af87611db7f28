"""Test doubles for the GPU attention kernels, so longalign/attention.py's real selection and call code runs on CPU.

- a fake `flash_attn` package (put into sys.modules) whose `flash_attn_varlen_func` has flash-attn 2.x's signature;
- a fake `torch.nn.attention.varlen.varlen_attn` with torch 2.13's signature (and 2.11's, the GPU image's, and older
  spellings: `SIGNATURES`).

Each asserts every documented precondition of the real kernel — (total, heads, head_dim) tensors with a
contiguous last dim, fp16/bf16, int32 cu_seqlens on the tensors' device that start at 0 and end at the row
lengths, Python-int max_seqlen equal to the longest sequence, causal attention, an explicit softmax scale, GQA only
where the kernel takes it — and then computes with its OWN per-sequence SDPA reference (causal aligned to the
last key, FlashAttention-2's rule). `Fault` turns a fake into a negative control that breaks one of them.
Nothing here is imported by the product.
"""

import contextlib
import dataclasses
import sys
import types

import torch
import torch.nn.functional as F

HALF = (torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Fault:
    """Knobs for negative controls: what a wrong kernel (or a wrong call) would do."""

    causal: bool = True          # False: attend to the whole sequence
    scale_factor: float = 1.0    # multiplies the softmax scale it was given
    cross_sequences: bool = False  # ignore cu_seqlens: one causal sequence over the whole row


@dataclasses.dataclass
class Record:
    calls: int = 0
    allow_fp32: bool = False     # the fp32 column of the backend table (real kernels take fp16/bf16 only)
    fault: Fault = dataclasses.field(default_factory=Fault)


RECORD = Record()


def check_inputs(q, k, v, cu_q, cu_k, max_q, max_k, gqa_ok: bool) -> None:
    """The preconditions flash-attn 2.x and torch's varlen_attn document (they share FlashAttention-2's code)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.ndim == 3, f"{name} must be (total, heads, head_dim), got {tuple(t.shape)}"
        assert t.stride(-1) == 1, f"{name} must have a contiguous last dim, strides {t.stride()}"
        assert t.dtype in HALF or (RECORD.allow_fp32 and t.dtype == torch.float32), f"{name} is {t.dtype}"
        assert t.device == q.device and t.dtype == q.dtype, f"{name} differs from q in device or dtype"
    assert k.shape == v.shape and k.shape[2] == q.shape[2], (q.shape, k.shape, v.shape)
    H, H_kv = q.shape[1], k.shape[1]
    assert H % H_kv == 0 and (gqa_ok or H == H_kv), f"{H} query heads and {H_kv} KV heads"
    for name, cu, t, m in (("q", cu_q, q, max_q), ("k", cu_k, k, max_k)):
        assert isinstance(cu, torch.Tensor) and cu.dtype == torch.int32, f"cu_seqlens_{name} must be int32"
        assert cu.device == q.device and cu.ndim == 1, f"cu_seqlens_{name} on {cu.device}, shape {tuple(cu.shape)}"
        lengths = (cu[1:] - cu[:-1]).tolist()
        assert int(cu[0]) == 0 and int(cu[-1]) == t.shape[0] and min(lengths) > 0, f"cu_seqlens_{name} {cu.tolist()}"
        assert type(m) is int and m == max(lengths), f"max_seqlen_{name} must be the Python int {max(lengths)}, got {m!r}"
    assert cu_q.shape == cu_k.shape, "as many query sequences as key sequences"


def reference(q, k, v, cu_q, cu_k, scale: float, causal: bool, window: int = -1, softcap: float = 0.0) -> torch.Tensor:
    """Per-sequence SDPA on (total, heads, D) tensors; causal aligned to each sequence's last key. window >= 0: a
    query sees at most `window` keys before it (FlashAttention's left window); softcap > 0: scores c * tanh(s / c),
    both written out by hand (SDPA takes neither)."""
    if RECORD.fault.cross_sequences:
        cu_q, cu_k = (torch.tensor([0, t.shape[0]]) for t in (q, k))
    bq, bk = cu_q.tolist(), cu_k.tolist()
    outs = []
    for i in range(len(bq) - 1):
        qs, ks, vs = (t[b[i]:b[i + 1]].transpose(0, 1)[None] for t, b in ((q, bq), (k, bk), (v, bk)))
        lq, lk = qs.shape[2], ks.shape[2]
        gqa = qs.shape[1] != ks.shape[1]
        if window >= 0 or softcap:
            ks, vs = (t.repeat_interleave(qs.shape[1] // t.shape[1], dim=1) for t in (ks, vs))
            scores = qs @ ks.transpose(-1, -2) * scale                           # (1, H, lq, lk)
            if softcap:
                scores = softcap * torch.tanh(scores / softcap)
            i = torch.arange(lq, device=q.device)[:, None] + (lk - lq)         # each query's own key index
            j = torch.arange(lk, device=q.device)[None, :]
            seen = (j <= i) if causal else torch.ones_like(j <= i)
            if window >= 0:
                seen = seen & (i - j <= window)
            o = scores.masked_fill(~seen, float("-inf")).softmax(-1).to(vs.dtype) @ vs
        elif causal and lq == lk:
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq) if causal else None
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=gqa)
        outs.append(o[0].transpose(0, 1))                                  # (l_i, H, D)
    return torch.cat(outs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn 2.x's signature; flash-attn takes fewer KV heads as they are (MQA/GQA)."""
    check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, gqa_ok=True)
    assert causal is True, "the packed attention of a causal LM must pass causal=True"
    assert isinstance(softmax_scale, float), "pass the model's softmax_scale explicitly"
    assert dropout_p == 0.0 and alibi_slopes is None and isinstance(softcap, float) and softcap >= 0.0
    assert tuple(window_size) == (-1, -1) or (window_size[0] >= 0 and window_size[1] == 0), window_size
    assert not return_attn_probs and block_table is None
    RECORD.calls += 1
    return reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale * RECORD.fault.scale_factor,
                     RECORD.fault.causal, window_size[0], softcap)


def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.13's signature; causal is window_size == (-1, 0), compared as a TUPLE (a list is not causal)."""
    check_inputs(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, gqa_ok=enable_gqa)
    assert type(window_size) is tuple and window_size[1] == 0 and window_size[0] >= -1, (
        f"causal attention is window_size=(-1, 0) or (w - 1, 0) as a tuple, got {window_size!r}")
    assert isinstance(scale, float), "pass the model's softmax scale explicitly"
    assert return_aux is None and seqused_k is None and block_table is None
    RECORD.calls += 1
    return reference(query, key, value, cu_seq_q, cu_seq_k, scale * RECORD.fault.scale_factor, RECORD.fault.causal,
                     window_size[0])


def varlen_attn_without_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                            window_size=(-1, -1), k_cache=None, v_cache=None, cache_seqlens=None):
    """An older spelling (no enable_gqa): KV heads must equal query heads."""
    return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size)


def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1)):
    """torch 2.11's signature exactly (torch/nn/attention/varlen.py at v2.11.0, the GPU image's torch): no
    enable_gqa, so KV heads must equal query heads; causal is `window_size == (-1, 0)`."""
    return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, return_aux=return_aux, scale=scale,
                       window_size=window_size)


def varlen_attn_without_scale(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """An older spelling without a softmax scale: the product must not use it."""
    raise AssertionError("a varlen_attn without a scale argument must not be called")


SIGNATURES = {"2.13": varlen_attn, "2.11": varlen_attn_2_11, "no enable_gqa": varlen_attn_without_gqa,
              "no scale": varlen_attn_without_scale}


def broken_flash_attn() -> types.ModuleType:
    """What a flash-attn built against another torch looks like: importing its kernels fails."""
    module = types.ModuleType("flash_attn")

    def __getattr__(name):
        raise ImportError("flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: "
                          "_ZN3c104cuda9SetDeviceEi")

    module.__getattr__ = __getattr__
    return module


def fake_flash_attn() -> types.ModuleType:
    module = types.ModuleType("flash_attn")
    module.__version__ = "2.8.3 (test double)"
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module


@contextlib.contextmanager
def kernels(flash="fake", varlen="2.13", allow_fp32: bool = False):
    """Put the doubles in place, run longalign.attention.select_backend as on a GPU machine (device "cpu"),
    and restore everything afterwards. Yields the chosen Backend. Set RECORD.fault inside for a negative control.

    flash: "fake" | "broken" (import fails) | None (not installed); varlen: a key of SIGNATURES or None
    (this torch has none, as older ones).
    """
    import torch.nn.attention.varlen as torch_varlen

    from longalign import attention

    saved = sys.modules.get("flash_attn"), torch_varlen.varlen_attn, attention._backend, RECORD.fault
    sys.modules["flash_attn"] = {"fake": fake_flash_attn, "broken": broken_flash_attn}[flash]() if flash else None
    if varlen is None:
        sys.modules["torch.nn.attention.varlen"] = None   # `from torch.nn.attention.varlen import ...` fails
    else:
        torch_varlen.varlen_attn = SIGNATURES[varlen]
    RECORD.fault, RECORD.allow_fp32, RECORD.calls = Fault(), allow_fp32, 0
    try:
        backend = attention.select_backend("cpu")
        if allow_fp32:  # let the (fake) kernel take fp32 too: the plumbing checked at fp32 precision
            backend = attention._backend = dataclasses.replace(backend, dtypes=(*backend.dtypes, torch.float32))
        yield backend
    finally:
        if saved[0] is None:
            sys.modules.pop("flash_attn", None)
        else:
            sys.modules["flash_attn"] = saved[0]
        sys.modules["torch.nn.attention.varlen"] = torch_varlen
        torch_varlen.varlen_attn = saved[1]
        attention._backend, RECORD.fault, RECORD.allow_fp32 = saved[2], saved[3], False


# ---------------------------------------------------------------------------------------------
# Host syncs: what would make the host wait for a GPU, counted on CPU

# Ops whose result the host must read (item/int/bool/float -> _local_scalar_dense) or whose output size
# depends on the data; tolist does not dispatch, so Tensor.tolist is wrapped instead.
SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique", "aten.unique")


@contextlib.contextmanager
def count_host_syncs():
    """Yields a Counter of host syncs by kind while the block runs: every `.item()` / `int()` / `bool()` /
    `.tolist()` of a tensor, every nonzero / masked_select / unique, and repeat_interleave without `output_size`."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    counts = Counter()

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            unsized = name == "aten.repeat_interleave" and (kwargs or {}).get("output_size") is None
            if name.startswith(SYNC_OPS) or unsized:
                counts[name] += 1
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counts["tolist"] += 1
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with Mode():
            yield counts
    finally:
        torch.Tensor.tolist = tolist
