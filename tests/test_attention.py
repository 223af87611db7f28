"""longalign/attention.py against a brute-force reference: explicit scores, softmax and a full mask."""

import pytest
import torch

from longalign.attention import HAS_FLASH_ATTN, attention, pack_segments, position_ids_from_cu_seqlens


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
    cu = pack_segments(torch.tensor([[0, 3, 5, 9]], dtype=torch.int32), total=11)  # (1, n+1) accepted
    assert cu.tolist() == [0, 3, 5, 9, 11] and cu.dtype == torch.int32            # padding tail = own segment
    assert position_ids_from_cu_seqlens(cu).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1]]


@pytest.mark.parametrize("bad", [[1, 4, 9], [0, 5, 5, 9], [0, 4, 12]])
def test_malformed_cu_seqlens_is_rejected(bad):
    with pytest.raises(ValueError, match="cu_seqlens"):
        pack_segments(torch.tensor(bad), total=9)


@pytest.mark.parametrize("H_kv", [4, 2, 1])  # MHA, GQA, MQA
def test_packed_equals_block_diagonal_reference(H_kv):
    cu = [0, 5, 6, 13, 20]
    q, k, v = qkv(1, 4, H_kv, 20)
    ours = attention(q, k, v, 8 ** -0.5, torch.tensor(cu, dtype=torch.int32))
    assert (ours - reference(q, k, v, block_causal(cu))).abs().max() <= 1e-12
    # negative control: one causal row over the whole pack attends across sequences
    assert (attention(q, k, v, 8 ** -0.5) - reference(q, k, v, block_causal(cu))).abs().max() > 1e-2


def test_padding_and_cache_continuation():
    q, k, v = qkv(2, 4, 2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded by 3
    allowed = torch.ones(10, 10, dtype=torch.bool).tril() & mask[:, None, None, :].bool()
    ours = attention(q, k, v, 8 ** -0.5, attention_mask=mask)
    assert (ours - reference(q, k, v, allowed))[1, 3:].abs().max() <= 1e-12  # real tokens only
    assert (ours - reference(q, k, v, allowed))[0].abs().max() <= 1e-12
    # the last 4 queries after 6 cached keys see what they see in the full causal pass
    tail = attention(q[:, :, 6:], k, v, 8 ** -0.5)
    assert (tail - attention(q, k, v, 8 ** -0.5)[:, 6:]).abs().max() <= 1e-12
    one = attention(q[:, :, 9:], k, v, 8 ** -0.5)  # one new token: no mask at all
    assert (one - attention(q, k, v, 8 ** -0.5)[:, 9:]).abs().max() <= 1e-12


@pytest.mark.skipif(not (HAS_FLASH_ATTN and torch.cuda.is_available()), reason="needs flash-attn and CUDA")
def test_flash_attn_varlen_equals_fallback_bf16():
    import longalign.attention as A

    cu = torch.tensor([0, 300, 301, 1000, 2048], dtype=torch.int32, device="cuda")
    q, k, v = (x.cuda() for x in qkv(1, 8, 2, 2048, D=64, dtype=torch.bfloat16))
    flash = attention(q, k, v, 0.125, cu)
    sdpa = A._sdpa_per_segment(q, k, v, cu, 0.125)
    assert (flash.float() - sdpa.float()).abs().max() <= 2e-2
