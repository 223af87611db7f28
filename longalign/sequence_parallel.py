"""Ulysses sequence parallelism for the model files, on DeepSpeed's own implementation.

A row of T tokens (a plain sequence or a pack) is split over a group of N ranks; each holds T/N
consecutive tokens and runs every layer on them. Only attention needs the whole row. Around it,
DeepSpeed's `UlyssesSPAttentionHF` exchanges heads for sequence with one all-to-all (q, k, v:
(B, H, T/N, D) on each rank -> (B, H/N, T, D)), our packed `attention` runs over the FULL row for this
rank's H/N heads, and a second all-to-all gives every rank its T/N positions of all heads back:

    rank 0   tokens 0..T/N-1, all heads ──┐ all-to-all  ┌── heads 0..H/N-1, all T tokens ── attention
    rank 1   tokens T/N..T-1, all heads ──┘             └── heads H/N..H-1, all T tokens ── attention

A pack stays block-diagonal: `shard_batch` gives every rank of the group the FULL row's `cu_seqlens` as
`row_cu_seqlens` (it cuts the row, so it knows them); the model reads them to the host once per forward
(attention.prepare_positions) and every layer attends block-diagonally over the full row with them: no
host sync per layer. (DeepSpeed still all-gathers the position ids in every layer; they restart at 0 in
every sequence, so RoPE is the same as without SP.)

The loss needs no exchange. The labels and loss weights are shifted on the FULL row before it is cut
(`shard_batch`): the last position of rank r's slice predicts the first token of rank r+1's, which rank
r could not see otherwise. Each rank's loss is sum_t w_t CE_t over its slice; the slices of a row add up
to the row's loss, and the gradient average over all W ranks that DDP / DeepSpeed ZeRO take is the same
as without sequence parallelism (train.py keeps the weights' factor W = world size, longalign/schedule.py).

What is supported: N divides the world size and the query heads; KV heads divisible by N, or N divisible
by the KV heads (then DeepSpeed replicates each KV head N / H_kv times: ChatGLM3's 2 KV groups at N = 8).
Batches of B rows (right padding) or one packed row; training forwards only (no KV cache).
"""

import torch

from longalign import IGNORE_INDEX
from longalign.attention import Layout, attention, pack_segments, position_ids_from_cu_seqlens
from longalign.loss import shift_targets

# ---------------------------------------------------------------------------------------------
# Sizes and groups

def check_sizes(sp_size: int, world_size: int, num_heads: int, num_kv_heads: int) -> None:
    """Raise ValueError, naming the numbers, unless N ranks can split this model and world."""
    if sp_size < 1 or world_size % sp_size:
        raise ValueError(f"--sequence_parallel_size {sp_size} must divide the world size {world_size}")
    if num_heads % sp_size:
        raise ValueError(f"--sequence_parallel_size {sp_size} must divide the model's {num_heads} attention heads")
    if num_kv_heads % sp_size and sp_size % num_kv_heads:
        raise ValueError(f"--sequence_parallel_size {sp_size} and the model's {num_kv_heads} KV heads must divide "
                         f"one another (KV heads are split, or replicated when there are fewer than ranks)")


def initialize(sp_size: int):
    """Create the sequence-parallel groups (consecutive ranks [gN, (g+1)N)) -> this rank's group.

    torch.distributed must be up (torchrun / the Trainer's arguments start it); deepspeed.comm wraps it.
    """
    import deepspeed
    import deepspeed.comm as dist
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    if parallel_state_sp._SEQUENCE_PARALLEL_GROUP is None:
        parallel_state_sp.initialize_sequence_parallel(sp_size)
    return parallel_state_sp.get_sequence_parallel_group()


# ---------------------------------------------------------------------------------------------
# Attention: DeepSpeed's all-to-all around our packed attention


def full_row_attention(module, q, k, v, attention_mask, *args, layout: Layout | None = None, scale=None, window=None,
                       softcap=None, **kwargs):
    """The core attention DeepSpeed calls after the first all-to-all: q (B, H/N, T, D), k, v (B, H_kv', T, D)
    -> ((B, T, H/N, D), None). `layout.segments` are the full row's sequences (a pack): block-diagonal.
    Without them, B plain rows (right padding): causal attention is exact for every real token (padding
    only ever comes after it). scale: the layer's (default `module.scale`, the model files'); window, softcap:
    what a transformers family passes (longalign/any_model.py)."""
    segments = layout.segments if layout is not None else None
    scale = module.scale if scale is None else scale
    return attention(q, k, v, scale, Layout(segments=segments), window=window, softcap=softcap), None


class UlyssesAttention:
    """Set as `layer.sequence_parallel` on each attention layer of a model file (see `enable`).

    A plain object, not an nn.Module, so it adds nothing to the model's modules, state dict or ZeRO hooks.
    """

    def __init__(self, layer, group, batch_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 num_layers: int):
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        self.layer, self.num_heads, self.head_dim = layer, num_heads, head_dim
        self.ulysses = UlyssesSPAttentionHF(
            attn=full_row_attention, batch_size=batch_size, attn_head_count=num_heads, attn_head_size=head_dim,
            kv_head_count=num_kv_heads, num_hidden_layers=num_layers, process_group=group,
            seq_length_is_variable=True)

    def __call__(self, q, k, v, position_ids, layout: Layout | None = None, **attention_kwargs):
        """q: (B, H, T/N, D), k, v: (B, H_kv, T/N, D), position_ids (B, T/N) -> (B, T/N, H, D).
        attention_kwargs (scale, window, softcap) go on to full_row_attention."""
        if position_ids is None:
            raise ValueError("sequence parallelism needs position_ids in every forward (shard_batch adds them).")
        B, _, T, _ = q.shape
        # DeepSpeed wants (B, T, H, D)-contiguous blocks before its all-to-all; it rearranges and copies itself.
        # It hands `layout` (the full row's segments) through to full_row_attention.
        out, _ = self.ulysses(self.layer, q, k, v, None, position_ids=position_ids.expand(B, -1).contiguous(),
                              layout=layout, **attention_kwargs)
        return out.view(B, T, self.num_heads, self.head_dim)


def attention_layers(model):
    """The attention modules of a model file or of a longalign/any_model.py family (they carry the
    `sequence_parallel` slot)."""
    return [m for m in model.modules() if hasattr(m, "sequence_parallel") and hasattr(m, "head_dim")]


def enable(model, sp_size: int, batch_size: int = 1) -> None:
    """Wrap every attention layer of `model` (modeling_llama / modeling_chatglm / longalign/any_model.py) for a group of
    `sp_size` ranks.

    Call on every rank after torch.distributed is up; `batch_size` is the rows per forward (1 for a pack).
    """
    import torch.distributed as dist

    config = model.config
    num_heads, num_kv_heads = config.num_attention_heads, config.num_key_value_heads
    check_sizes(sp_size, dist.get_world_size(), num_heads, num_kv_heads)
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layer with a `sequence_parallel` slot: "
                         "sequence parallelism needs modeling_llama.py, modeling_chatglm.py or longalign/any_model.py.")
    group = initialize(sp_size)
    for layer in layers:
        layer.sequence_parallel = UlyssesAttention(layer, group, batch_size, num_heads, num_kv_heads,
                                                   layer.head_dim, config.num_hidden_layers)


def disable(model) -> None:
    for layer in attention_layers(model):
        layer.sequence_parallel = None


# ---------------------------------------------------------------------------------------------
# Data: one rank's slice of a batch


def shard_batch(batch: dict, sp_rank: int, sp_size: int, pad_token_id: int) -> dict:
    """A collated full-row batch -> this rank's slice, ready for the model's forward.

    In: input_ids (B, T), labels (B, T) unshifted, optional loss_weights (B, T), and `cu_seqlens` for a
    pack (B = 1) or `attention_mask` for padded rows. Out: input_ids, position_ids (B, T'/N) and
    shift_labels, shift_loss_weights (B, T'/N): shifted on the full row (a pack's sequence never predicts
    the next one's first token), then cut; for a pack also `row_cu_seqlens`, the full row's boundaries
    (int32, the same on every rank), which attention needs after its all-to-all. The row is first padded
    to T' = a multiple of N (pad id, IGNORE_INDEX, weight 0); in a pack the padding is a segment of its
    own (positions restart at 0), so no real token attends to it. The same layout as DeepSpeed's
    UlyssesSPDataLoaderAdapter (`shift_labels` included), but each rank cuts its own slice from the batch
    it already holds, so nothing is exchanged.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    B, T = input_ids.shape
    pad = -T % sp_size
    weights = batch.get("loss_weights")
    cu_seqlens = batch.get("cu_seqlens")
    if cu_seqlens is not None:
        # positions restart in every sequence and in the padding tail (pack_segments makes it a segment)
        segments = pack_segments(cu_seqlens, T + pad)
        position_ids = position_ids_from_cu_seqlens(segments)                                  # (1, T')
    else:
        position_ids = torch.arange(T + pad)[None].expand(B, -1)                               # (B, T')
    input_ids = torch.nn.functional.pad(input_ids, (0, pad), value=pad_token_id)
    labels = torch.nn.functional.pad(labels, (0, pad), value=IGNORE_INDEX)
    if weights is not None:
        weights = torch.nn.functional.pad(weights, (0, pad), value=0.0)
    shift_labels, shift_weights = shift_targets(labels, weights, cu_seqlens)                   # (B, T') each
    s = slice(sp_rank * (T + pad) // sp_size, (sp_rank + 1) * (T + pad) // sp_size)
    out = {"input_ids": input_ids[:, s], "position_ids": position_ids[:, s].contiguous(),
           "shift_labels": shift_labels[:, s]}
    if shift_weights is not None:
        out["shift_loss_weights"] = shift_weights[:, s]
    if cu_seqlens is not None:
        out["row_cu_seqlens"] = segments.cu_seqlens                                            # (n+1 or n+2,)
    return out
