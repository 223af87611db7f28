"""ChatGLM3 / LongAlign-6B-64k / GLM-4 (chatglm checkpoint format) with packed attention and loss weights.

Loads the original releases as they are on the hub, with no remote code: `config.json` with
`model_type: chatglm` (`num_layers`, `padded_vocab_size`, `ffn_hidden_size`, `kv_channels`,
`multi_query_group_num`, `add_qkv_bias`, `rope_ratio`, `layernorm_epsilon`, ...) and the state-dict
keys `transformer.embedding.word_embeddings`, `transformer.encoder.layers.N.*`,
`transformer.encoder.final_layernorm`, `transformer.output_layer`, from `.bin` shards (which also hold
`transformer.rotary_pos_emb.inv_freq`: ignored, recomputed from the config) or safetensors:

    from modeling_chatglm import ChatGLMForConditionalGeneration
    model = ChatGLMForConditionalGeneration.from_pretrained("THUDM/LongAlign-6B-64k", dtype=torch.bfloat16)
    out = model(input_ids, cu_seqlens=cu_seqlens, labels=labels, loss_weights=loss_weights)
    response, history = model.chat(tokenizer, "Summarise the report.", history=[])

The forward contract is modeling_llama.py's (cu_seqlens, unshifted labels, loss_weights; see there).
The architecture is transformers' GlmForCausalLM under other key names (mapping in docs/models.md): RMSNorm,
grouped/multi-query attention with bias on the fused QKV only, rotary on the first half of each head
with interleaved pairs and base 10000 * rope_ratio, SwiGLU with `dense_h_to_4h` = [gate; up], an
untied output layer. `rope_ratio` comes from the config (absent = 1); the original LongAlign code
hard-coded 200, which LongAlign-6B-64k's config therefore has to state.

Data flow:  input_ids -> embedding -> N x GLMBlock(RMSNorm -> SelfAttention(RoPE) -> + ->
            RMSNorm -> MLP -> +) -> final_layernorm -> output_layer (logits, or the loss)
"""

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer

from longalign.attention import (
    Layout,
    attention,
    keep_padding_mask,
    lm_output,
    prepare_positions,
    resolve_cache,
)
from longalign.loss import LMHead
from modeling_llama import LlamaPreTrainedModel, RMSNorm, RotaryEmbedding

# ---------------------------------------------------------------------------------------------
# Config: the original field names, plus the standard names transformers' generation code reads


class ChatGLMConfig(PreTrainedConfig):
    """Defaults are ChatGLM3-6B's; glm-4-9b-chat sets rope_ratio 500, padded_vocab_size 151552, 40 layers."""

    model_type = "chatglm"
    attribute_map = {"num_hidden_layers": "num_layers", "vocab_size": "padded_vocab_size",
                     "intermediate_size": "ffn_hidden_size", "max_position_embeddings": "seq_length"}

    num_layers: int = 28
    padded_vocab_size: int = 65024
    hidden_size: int = 4096
    ffn_hidden_size: int = 13696
    kv_channels: int = 128                  # head dim
    num_attention_heads: int = 32
    seq_length: int = 8192
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True
    apply_residual_connection_post_layernorm: bool = False
    post_layer_norm: bool = True
    add_bias_linear: bool = False           # bias on dense, dense_h_to_4h, dense_4h_to_h
    add_qkv_bias: bool = False              # bias on query_key_value (True in ChatGLM3 and GLM-4)
    multi_query_attention: bool = False
    multi_query_group_num: int = 1          # KV heads when multi_query_attention
    rope_ratio: float = 1.0                 # RoPE base = 10000 * rope_ratio
    original_rope: bool = True
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    bos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.rmsnorm or self.apply_residual_connection_post_layernorm or not self.post_layer_norm:
            raise ValueError("only the ChatGLM2/3 / GLM-4 layout is supported: set rmsnorm true, "
                             "apply_residual_connection_post_layernorm false and post_layer_norm true in config.json.")
        if self.rope_ratio is None:  # some configs write null
            self.rope_ratio = 1.0

    @property
    def num_key_value_heads(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads


# ---------------------------------------------------------------------------------------------
# Blocks


def apply_rotary_interleaved(x, cos, sin):
    """Rotate the first 2 * len(freqs) dims of each head as (x_2i, x_2i+1) pairs; the rest pass.

    x: (B, H, T, D); cos, sin: (B, T, R/2) with R = D / 2 for ChatGLM.
    """
    cos, sin = cos[:, None], sin[:, None]                                # (B, 1, T, R/2)
    rot = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x0, x1 = x_rot[..., 0::2], x_rot[..., 1::2]                          # (B, H, T, R/2) each
    x_rot = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    return torch.cat([x_rot, x_pass], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.kv_channels
        self.scale = self.head_dim ** -0.5
        # one fused projection, rows [q: H*D | k: H_kv*D | v: H_kv*D] as in the checkpoint
        qkv_size = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, qkv_size,
                                         bias=config.add_bias_linear or config.add_qkv_bias)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.add_bias_linear)
        self.sequence_parallel = None  # Ulysses wrapper under sequence parallelism (see modeling_llama.Attention)

    def forward(self, x, rope, cache=None, layout: Layout | None = None, position_ids=None):
        B, T, _ = x.shape
        sizes = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2)       # (B, heads, T, D)
                   for t in self.query_key_value(x).split(sizes, dim=-1))
        q, k = apply_rotary_interleaved(q, *rope), apply_rotary_interleaved(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)                      # (B, H_kv, past + T, D)
        if self.sequence_parallel is not None:
            y = self.sequence_parallel(q, k, v, position_ids, layout)         # (B, T, H, D) this rank's slice
        else:
            y = attention(q, k, v, self.scale, layout)                        # (B, T, H, D)
        return self.dense(y.reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU with one fused input projection: dense_h_to_4h = [gate; up]."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, x):                                                # (B, T, C)
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(nn.functional.silu(gate) * up)


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache=None, layout=None, position_ids=None):
        x = x + self.self_attention(self.input_layernorm(x), rope, cache, layout, position_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


class Embedding(nn.Module):
    """Only here to keep the checkpoint's key `transformer.embedding.word_embeddings`."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class Encoder(nn.Module):
    """Only here to keep the keys `transformer.encoder.layers.N.*` and `.final_layernorm`."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)


# ---------------------------------------------------------------------------------------------
# The model


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _keys_to_ignore_on_load_unexpected = [r"rotary_pos_emb\.inv_freq"]  # the .bin releases store it
    accepts_loss_kwargs = False  # see modeling_llama.py: the loss is not num_items_in_batch-normalised
    _supports_sdpa = _supports_flash_attn = True  # accepted; attention is longalign/attention.py's anyway
    _init_weights = LlamaPreTrainedModel._init_weights  # rotary buffers rebuilt from rope_ratio, never loaded
    create_masks_for_generate = staticmethod(keep_padding_mask)  # see modeling_llama.py


class ChatGLMModel(ChatGLMPreTrainedModel):
    """The original's `transformer`: it also owns the output layer (key `transformer.output_layer`)."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.embedding = Embedding(config)
        # rotary on the first half of each head, base 10000 * rope_ratio
        rope = {"rope_type": "default", "rope_theta": 10000.0 * config.rope_ratio}
        self.rotary_pos_emb = RotaryEmbedding(config, config.kv_channels // 2, rope)
        self.encoder = Encoder(config)
        self.output_layer = LMHead(config.hidden_size, config.padded_vocab_size)
        self.post_init()

    def forward(self, input_ids=None, cu_seqlens=None, position_ids=None, attention_mask=None,
                cache=None, inputs_embeds=None, row_cu_seqlens=None):
        """-> final hidden states (B, T, C); same packing rules as modeling_llama.LlamaModel."""
        x = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        layout, position_ids = prepare_positions(x, cu_seqlens, position_ids, cache, attention_mask, row_cu_seqlens)
        rope = self.rotary_pos_emb(x, position_ids)                                 # 2 x (B, T, D/4)
        for layer in self.encoder.layers:
            x = layer(x, rope, cache, layout, position_ids)
        return self.encoder.final_layernorm(x)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def get_output_embeddings(self):
        return self.transformer.output_layer

    def forward(self, input_ids=None, cu_seqlens=None, position_ids=None, attention_mask=None,
                past_key_values=None, use_cache=None, labels=None, loss_weights=None,
                inputs_embeds=None, cache=None, logits_to_keep=0, shift_labels=None, shift_loss_weights=None,
                row_cu_seqlens=None, **kwargs):
        """See modeling_llama.LlamaForCausalLM.forward: the same contract and return value."""
        cache = cache if cache is not None else past_key_values
        training = cu_seqlens is not None or labels is not None or shift_labels is not None
        cache = resolve_cache(self, cache, use_cache, training or row_cu_seqlens is not None)
        hidden = self.transformer(input_ids, cu_seqlens, position_ids, attention_mask, cache, inputs_embeds,
                                  row_cu_seqlens)
        # (loss, None) with labels, else (None, logits (B, T, V))
        loss, logits = self.transformer.output_layer(hidden, labels, loss_weights, cu_seqlens,
                                                         logits_to_keep, shift_labels, shift_loss_weights)
        return lm_output(loss, logits, cache)

    @torch.inference_mode()
    def chat(self, tokenizer, query: str, history: list | None = None, template: str = "chatglm",
             max_new_tokens: int = 512, **generate_kwargs) -> tuple[str, list[dict]]:
        """One chat turn: -> (response, history + this turn), history as ChatGLM3's role/content dicts.

        `history` may also hold ChatGLM2-style (query, response) pairs. The prompt ids come from
        longalign.chat.encode_prompt (the paper's `[Round i]\\n\\n问：...\\n\\n答：` format by default), the
        encoder pre_tokenize.py trains with: `[gMASK] sop` are the two special ids and every earlier answer
        ends with EOS, exactly the context ids of training. (Tokenizing the prompt's text in one call would
        turn `[gMASK]sop` into plain-text pieces and could merge tokens across piece boundaries.)
        """
        from longalign.chat import encode_prompt

        messages = []
        for turn in history or []:
            if isinstance(turn, dict):
                messages.append(turn)
            else:
                messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        messages.append({"role": "user", "content": query})
        input_ids = torch.tensor([encode_prompt(messages, template, tokenizer)], device=self.device)  # (1, T)
        output = self.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               max_new_tokens=max_new_tokens, **generate_kwargs)
        response = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
        return response, messages + [{"role": "assistant", "content": response}]
