"""longalign/attention.py against a brute-force reference: explicit scores, softmax and a full mask."""

import pytest
import torch

from longalign.attention import Layout, attention, pack_segments, position_ids_from_cu_seqlens


def reference(q, k, v, allowed):
    """softmax(q k^T / sqrt(D) masked by `allowed` (Tq, Tk) or (B, 1, Tq, Tk)) v, KV heads repeated."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2)  # (B, T, H, D)


def block_causal(cu):
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), torch.diff(torch.tensor(cu)))
    T = cu[-1]
    return (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()


def qkv(B, H, H_kv, T, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, D, generator=g, dtype=dtype) for h in (H, H_kv, H_kv)]


def test_position_ids_restart_in_every_sequence():
    seg = pack_segments(torch.tensor([[0, 3, 5, 9]], dtype=torch.int32), total=11)  # (1, n+1) accepted
    assert seg.cu_seqlens.tolist() == [0, 3, 5, 9, 11] and seg.cu_seqlens.dtype == torch.int32  # tail = own segment
    assert seg.bounds == (0, 3, 5, 9, 11) and seg.max_seqlen == 4
    assert position_ids_from_cu_seqlens(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1]]


@pytest.mark.parametrize("bad", [[1, 4, 9], [0, 5, 5, 9], [0, 4, 12]])
def test_malformed_cu_seqlens_is_rejected(bad):
    with pytest.raises(ValueError, match="cu_seqlens"):
        pack_segments(torch.tensor(bad), total=9)


@pytest.mark.parametrize("H_kv", [4, 2, 1])  # MHA, GQA, MQA
def test_packed_equals_block_diagonal_reference(H_kv):
    cu = [0, 5, 6, 13, 20]
    q, k, v = qkv(1, 4, H_kv, 20)
    ours = attention(q, k, v, 8 ** -0.5, Layout(pack_segments(torch.tensor(cu, dtype=torch.int32), 20)))
    assert (ours - reference(q, k, v, block_causal(cu))).abs().max() <= 1e-12
    # negative control: one causal row over the whole pack attends across sequences
    assert (attention(q, k, v, 8 ** -0.5) - reference(q, k, v, block_causal(cu))).abs().max() > 1e-2


def test_padding_and_cache_continuation():
    q, k, v = qkv(2, 4, 2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded by 3
    allowed = torch.ones(10, 10, dtype=torch.bool).tril() & mask[:, None, None, :].bool()
    ours = attention(q, k, v, 8 ** -0.5, Layout(attention_mask=mask))
    assert (ours - reference(q, k, v, allowed))[1, 3:].abs().max() <= 1e-12  # real tokens only
    assert (ours - reference(q, k, v, allowed))[0].abs().max() <= 1e-12
    # the last 4 queries after 6 cached keys see what they see in the full causal pass
    tail = attention(q[:, :, 6:], k, v, 8 ** -0.5)
    assert (tail - attention(q, k, v, 8 ** -0.5)[:, 6:]).abs().max() <= 1e-12
    one = attention(q[:, :, 9:], k, v, 8 ** -0.5)  # one new token: no mask at all
    assert (one - attention(q, k, v, 8 ** -0.5)[:, 9:]).abs().max() <= 1e-12


def test_static_cache_layout():
    """A static cache hands back every slot, the empty ones after the real tokens too: queries at slots
    past..past+Tq-1 must see slots <= their own and never the empty ones, with `past` the cache's 0-dim counter."""
    q, k, v = qkv(2, 4, 2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    full = attention(q, k, v, 8 ** -0.5, Layout(attention_mask=mask))          # (B, 10, H, D) no cache
    junk = torch.randn(2, 2, 6, 8, dtype=torch.float64)                          # 6 empty slots after the 10 real
    k_static, v_static = torch.cat([k, junk], 2), torch.cat([v, junk], 2)
    for past in (0, 6, 9):  # prefill, prefill after cached tokens, one decoding step
        tail = attention(q[:, :, past:], k_static, v_static, 8 ** -0.5,
                         Layout(attention_mask=mask[:, :10], past=torch.tensor(past)))
        assert (tail - full[:, past:])[0].abs().max() <= 1e-12
        assert (tail - full[:, past:])[1, max(0, 3 - past):].abs().max() <= 1e-12
    # control: aligning the queries to the last slot (what a dynamic cache means) reads the empty slots
    wrong = attention(q[:, :, 6:], k_static[:, :, :16], v_static[:, :, :16], 8 ** -0.5, Layout(attention_mask=None))
    assert (wrong - full[:, 6:]).abs().max() > 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_selected_kernel_equals_fallback_bf16():
    import longalign.attention as A

    backend = A.select_backend()
    if backend.kernel is None:
        pytest.skip(backend.name)
    seg = pack_segments(torch.tensor([0, 300, 301, 1000, 2048], dtype=torch.int32), 2048, "cuda")
    q, k, v = (x.cuda() for x in qkv(1, 8, 2, 2048, D=64, dtype=torch.bfloat16))
    kernel = attention(q, k, v, 0.125, Layout(seg))
    sdpa = A._sdpa_per_segment(q, k, v, seg.bounds, 0.125)
    assert (kernel.float() - sdpa.float()).abs().max() <= 2e-2
