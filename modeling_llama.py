"""Llama-family causal LM with packed attention (`cu_seqlens`) and the weighted loss of LongAlign.

Loads stock Hugging Face Llama / Mistral / Qwen2 checkpoints unchanged (same `config.json` and
state-dict keys), and what it saves loads back into `transformers.LlamaForCausalLM`:

    from modeling_llama import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf", dtype=torch.bfloat16)
    out = model(input_ids, cu_seqlens=cu_seqlens, labels=labels, loss_weights=loss_weights)

What differs from the stock model, and why:
  * `cu_seqlens` (int32, (n+1,)) makes a packed row block-diagonal: no token attends to another
    sequence of the pack, and positions restart at 0 in every sequence (longalign/attention.py).
  * `labels` are unshifted (the model shifts); with `loss_weights` the loss is sum_t w_t * CE_t
    over target tokens, without them the mean over target tokens (longalign/loss.py). The loss never
    materialises the (T, V) fp32 logits, so `logits` is None when labels are given.
  * `shift_labels` / `shift_loss_weights` instead of labels: targets already shifted on the full row, for
    a rank that holds only a slice of it under sequence parallelism (longalign/sequence_parallel.py,
    which also sets each attention layer's `sequence_parallel` wrapper); `row_cu_seqlens` are then the
    FULL row's sequence boundaries (int32), which attention needs after its all-to-all.
  * The loss is NOT divided by the Trainer's `num_items_in_batch`; `accepts_loss_kwargs = False`
    tells the HF Trainer so (train.py's compute_loss owns the normalisation of Eq. 2-4).

Supported: GQA/MQA, `attention_bias`, `mlp_bias`, tied or untied embeddings, the RoPE types of
today's checkpoints (default, linear, dynamic, llama3, yarn, through transformers' own rope
initialisation), gradient checkpointing, bf16, `generate()` with a dynamic or static KV cache.
Not supported: sliding-window attention (Mistral v0.1's 4096 window; an error if a sequence exceeds it,
decided from lengths the host knows, without reading the device).

Data flow:  input_ids -> embed_tokens -> N x DecoderLayer(RMSNorm -> Attention(RoPE) -> + ->
            RMSNorm -> MLP -> +) -> norm -> lm_head (logits, or the loss when labels are given)
"""

import torch
from torch import nn
from transformers import LlamaConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update

from longalign.attention import (
    Layout,
    attention,
    keep_padding_mask,
    lm_output,
    prepare_positions,
    resolve_cache,
)
from longalign.loss import LMHead

# ---------------------------------------------------------------------------------------------
# Building blocks (also used by modeling_chatglm.py: ChatGLM's norm and rotary tables are these)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back (as Llama and ChatGLM do)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):                                                # (..., C)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Position ids -> (cos, sin) of the rotation angles, each (B, T, rotary_dim // 2).

    `rope_type` "default" is the original RoPE, inv_freq = 1 / base^(2i / rotary_dim); every other
    type (linear, dynamic, llama3, yarn, ...) comes from transformers' ROPE_INIT_FUNCTIONS, which
    also returns the attention scaling some of them (yarn) apply to cos and sin.
    """

    def __init__(self, config, rotary_dim: int, rope_parameters: dict | None = None):
        super().__init__()
        self.config, self.rotary_dim = config, rotary_dim
        self.rope_parameters = rope_parameters or config.rope_parameters  # {"rope_type", "rope_theta", ...}
        self.rope_type = self.rope_parameters.get("rope_type", "default")
        # read by transformers' dynamic_rope_update (dynamic NTK recomputes inv_freq past this length)
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.compute_inv_freq()
        self.register_buffer("inv_freq", inv_freq, persistent=False)            # (rotary_dim // 2,)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def compute_inv_freq(self) -> tuple[torch.Tensor, float]:
        if self.rope_type == "default":
            base = self.rope_parameters["rope_theta"]
            exponent = torch.arange(0, self.rotary_dim, 2, dtype=torch.float) / self.rotary_dim
            return 1.0 / (base ** exponent), 1.0
        return ROPE_INIT_FUNCTIONS[self.rope_type](self.config)

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x, position_ids):                                  # position_ids (B, T)
        freqs = position_ids[..., None].float() * self.inv_freq.float().to(x.device)  # (B, T, rot/2)
        cos, sin = freqs.cos() * self.attention_scaling, freqs.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def apply_rotary(x, cos, sin):
    """Rotate (x_i, x_{i + D/2}) pairs by the angle of frequency i (Llama's half-split layout).

    x: (B, H, T, D); cos, sin: (B, T, D/2).
    """
    cos, sin = cos[:, None], sin[:, None]                                # (B, 1, T, D/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ---------------------------------------------------------------------------------------------
# Decoder layer


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scale = self.head_dim ** -0.5
        # Llama/Mistral: one `attention_bias` flag for q, k, v and o; Qwen2: bias on q, k, v only
        qkv_bias = getattr(config, "attention_bias", config.model_type == "qwen2")
        o_bias = getattr(config, "attention_bias", False)
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=o_bias)
        # Sequence parallelism (longalign/sequence_parallel.py) sets this to its Ulysses wrapper: this rank
        # holds a slice of the row; the wrapper trades it for all positions of H/N heads, attends over the
        # full row with `attention` (block-diagonal over the layout's full-row segments), and trades back.
        self.sequence_parallel = None

    def forward(self, x, rope, cache=None, layout: Layout | None = None, position_ids=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:                                              # generation: past + new keys
            k, v = cache.update(k, v, self.layer_idx)                      # (B, H_kv, past + T, D)
        if self.sequence_parallel is not None:
            y = self.sequence_parallel(q, k, v, position_ids, layout)         # (B, T, H, D) this rank's slice
        else:
            y = attention(q, k, v, self.scale, layout)                        # (B, T, H, D)
        return self.o_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):                                                # (B, T, C)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block. GradientCheckpointingLayer lets `gradient_checkpointing_enable()` recompute it."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache=None, layout=None, position_ids=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, layout, position_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---------------------------------------------------------------------------------------------
# The model


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    accepts_loss_kwargs = False  # the HF Trainer must not expect a num_items_in_batch-normalised loss
    # attention always goes through longalign/attention.py (a varlen kernel on CUDA when one runs, else
    # SDPA), whatever `attn_implementation` says; these let callers pass "sdpa" or "flash_attention_2"
    _supports_sdpa = _supports_flash_attn = True
    # generate() would turn the padding mask into 4-D masks for static caches; attention.py wants the 2-D one
    create_masks_for_generate = staticmethod(keep_padding_mask)

    def _init_weights(self, module):
        if isinstance(module, RotaryEmbedding):  # non-persistent buffers: rebuilt, never loaded
            inv_freq, _ = module.compute_inv_freq()
            module.inv_freq.copy_(inv_freq)
            module.original_inv_freq.copy_(inv_freq)
        else:
            PreTrainedModel._init_weights(self, module)  # (explicit: modeling_chatglm.py reuses this method)


class LlamaModel(LlamaPreTrainedModel):
    """Embeddings, decoder layers and final norm: input ids -> final hidden states (B, T, C)."""

    def __init__(self, config):
        super().__init__(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.rotary_emb = RotaryEmbedding(config, head_dim)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids=None, cu_seqlens=None, position_ids=None, attention_mask=None,
                cache=None, inputs_embeds=None, row_cu_seqlens=None):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        # segments, padding and cache offset, once per forward (the layers read no device value)
        layout, position_ids = prepare_positions(x, cu_seqlens, position_ids, cache, attention_mask, row_cu_seqlens)
        window = getattr(self.config, "sliding_window", None)  # Mistral v0.1; Qwen2 when use_sliding_window
        if window and getattr(self.config, "use_sliding_window", True):
            check_window(window, layout, x.shape[1])
        rope = self.rotary_emb(x, position_ids)                                     # 2 x (B, T, D/2)
        for layer in self.layers:
            x = layer(x, rope, cache, layout, position_ids)
        return self.norm(x)


def check_window(window: int, layout: Layout, T: int) -> None:
    """Sliding-window attention is not implemented: stop where it would matter (a sequence longer than the
    window), from lengths the host already knows."""
    if isinstance(layout.past, torch.Tensor):
        raise ValueError("a static KV cache with a sliding-window model is not supported; use the default cache.")
    longest = layout.segments.max_seqlen if layout.segments is not None else (layout.past or 0) + T
    if longest > window:
        raise ValueError(f"sequences longer than the sliding window ({window}) are not supported; "
                         "shorten them or use a checkpoint without a window.")


class LlamaForCausalLM(LlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # used when tie_word_embeddings

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, cu_seqlens=None, position_ids=None, attention_mask=None,
                past_key_values=None, use_cache=None, labels=None, loss_weights=None,
                inputs_embeds=None, cache=None, logits_to_keep=0, shift_labels=None, shift_loss_weights=None,
                row_cu_seqlens=None, **kwargs):
        """See the module docstring. Extra keys (e.g. the Trainer's num_items_in_batch) are ignored."""
        cache = cache if cache is not None else past_key_values  # transformers 5 calls it `cache`
        training = cu_seqlens is not None or labels is not None or shift_labels is not None
        cache = resolve_cache(self, cache, use_cache, training or row_cu_seqlens is not None)
        hidden = self.model(input_ids, cu_seqlens, position_ids, attention_mask, cache, inputs_embeds, row_cu_seqlens)
        # (loss, None) with labels, else (None, logits (B, T, V))
        loss, logits = self.lm_head(hidden, labels, loss_weights, cu_seqlens, logits_to_keep,
                                   shift_labels, shift_loss_weights)
        return lm_output(loss, logits, cache)
