"""Packed attention for the model files: one entry point, flash-attn on CUDA, exact SDPA elsewhere.

A packed row (batch size 1) holds several sequences back to back. `cu_seqlens` marks where each one
starts; attention is causal inside a sequence and never crosses a boundary (block-diagonal):

    tokens        a0 a1 a2 | b0 b1 | c0 c1 c2 c3 | p  p        (p = padding tail of the pack)
    cu_seqlens    [0,        3,      5,            9]           int32, strictly increasing
    segments      [0, 3, 5, 9, 11]                              the tail becomes one segment of its own
    position_ids  0  1  2    0  1    0  1  2  3    0  1         reset at every sequence start

RoPE is relative, so resetting positions gives each sequence exactly the attention it has alone.

Two backends compute the same thing:
  * `flash_attn_varlen_func` (FlashAttention-2) when flash-attn is installed, the tensors are on CUDA
    and in fp16/bf16 — the paper's kernel; no mask is ever materialised.
  * otherwise one `scaled_dot_product_attention(is_causal=True)` call per segment: exact, works on
    CPU and GPU in any dtype, and never builds a T x T mask either (cost grows with sum(l_i^2), not T^2).
Grouped-query / multi-query attention (fewer KV heads than query heads) is handled by both.
"""

import importlib.util

import torch
import torch.nn.functional as F

HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


# ---------------------------------------------------------------------------------------------
# cu_seqlens -> segments and position ids

def pack_segments(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Check `cu_seqlens` and return the int32 segment boundaries covering all `total` tokens.

    Accepts shape (n+1,) or (1, n+1). A padding tail (cu_seqlens[-1] < total) becomes one extra
    segment, so real tokens never attend to it (its labels are IGNORE_INDEX anyway).
    """
    cu = cu_seqlens.reshape(-1).to(torch.int32)
    if cu.numel() < 2 or int(cu[0]) != 0 or bool((cu[1:] <= cu[:-1]).any()) or int(cu[-1]) > total:
        raise ValueError(
            f"cu_seqlens must start at 0, increase strictly and end at most at the row length {total}; "
            f"got {cu.tolist()[:8]}{'...' if cu.numel() > 8 else ''}."
        )
    if int(cu[-1]) < total:
        cu = torch.cat([cu, cu.new_tensor([total])])
    return cu


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(n+1,) segment boundaries -> (1, total) position ids that restart at 0 in every segment."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]                                            # (n,)
    starts = torch.repeat_interleave(cu[:-1], lengths)                    # (total,) start of own segment
    return (torch.arange(int(cu[-1]), device=cu.device) - starts).unsqueeze(0)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(T,) position ids that restart at 0 in every segment -> the (n+1,) int32 segment boundaries.

    The inverse of `position_ids_from_cu_seqlens`. Sequence parallelism needs it: each rank holds a slice
    of the row, and the position ids (gathered over the ranks) are what tells it where sequences start.
    """
    starts = (position_ids.reshape(-1) == 0).nonzero().squeeze(1)                # (n,) segment starts
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("position ids of a row must start at 0 (and restart at 0 in every packed sequence).")
    end = starts.new_tensor([position_ids.numel()])
    return torch.cat([starts, end]).to(torch.int32)


def prepare_positions(x: torch.Tensor, cu_seqlens=None, position_ids=None, cache=None):
    """The model's per-forward setup -> (segments or None, longest segment or None, position ids (B, T)).

    Packed row: segments from `cu_seqlens`, positions restarting per sequence. Otherwise positions
    count on from the tokens already in the KV cache. x: (B, T, C) input embeddings.
    """
    T = x.shape[1]
    if cu_seqlens is None:
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + T, device=x.device)[None]    # (1, T)
        return None, None, position_ids
    if cache is not None:
        raise ValueError("cu_seqlens (packed training) and a KV cache (generation) cannot be combined.")
    cu_seqlens = pack_segments(cu_seqlens.to(x.device), T)                          # (n+1,) int32
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if position_ids is None:
        position_ids = position_ids_from_cu_seqlens(cu_seqlens)                     # (1, T)
    return cu_seqlens, max_seqlen, position_ids


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


# ---------------------------------------------------------------------------------------------
# Attention

def _flash_varlen(q, k, v, cu_seqlens, max_seqlen: int, scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    # flash-attn wants (total, heads, D) with the packed tokens along dim 0
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (q, k, v))
    out = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                 softmax_scale=scale, causal=True)  # (T, H, D)
    return out.unsqueeze(0)                                              # (1, T, H, D)


def _sdpa_per_segment(q, k, v, cu_seqlens, scale: float) -> torch.Tensor:
    bounds = cu_seqlens.tolist()
    gqa = q.shape[1] != k.shape[1]
    outs = [
        F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                       scale=scale, enable_gqa=gqa)    # (1, H, l_i, D)
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2)                        # (1, T, H, D)


def _dense(q, k, v, attention_mask, scale: float) -> torch.Tensor:
    """Ordinary causal attention for a (B, T) batch, optionally after `past` cached tokens.

    A mask is built only when needed: left/right padding (2-D `attention_mask` over past + new
    tokens) or several new tokens after a cache (prefill continuation). Generation's usual case,
    one new token without padding, and training's, no cache without padding, need none.
    """
    tq, tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and tq == tk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    elif not padded and tq == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    else:
        past = tk - tq
        i = torch.arange(tq, device=q.device)[:, None]
        j = torch.arange(tk, device=q.device)[None, :]
        mask = (j <= past + i)[None, None]                                # (1, 1, Tq, Tk) causal
        if padded:
            mask = mask & attention_mask[:, None, None, -tk:].bool()     # (B, 1, Tq, Tk)
            # a padding query sees nothing; let it see everything so softmax stays finite (its output
            # is never used)
            mask = mask | ~mask.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)                                           # (B, Tq, H, D)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention; block-diagonal when `cu_seqlens` is given.

    q: (B, H, Tq, D); k, v: (B, H_kv, Tk, D) with H % H_kv == 0 (GQA/MQA).
    cu_seqlens: segment boundaries from `pack_segments` (B must be 1); max_seqlen: longest segment.
    attention_mask: optional (B, Tk) 1 = real token, 0 = padding (ignored with cu_seqlens).
    Returns (B, Tq, H, D).
    """
    if cu_seqlens is None:
        return _dense(q, k, v, attention_mask, scale)
    if q.shape[0] != 1:
        raise ValueError(f"a packed row has batch size 1, got {q.shape[0]}; concatenate sequences instead.")
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return _flash_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
    return _sdpa_per_segment(q, k, v, cu_seqlens, scale)
