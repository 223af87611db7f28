"""Our forward contract for any transformers decoder-only causal LM, through transformers' own extension points.

The model files at the root are the paper's (Llama family, ChatGLM). Every other family (Qwen3, Gemma-3, Phi-3,
OLMo-2, SmolLM3, GLM-4, Granite, Cohere2, ...) keeps transformers' own modeling code, and gets what train.py
needs without a line of it copied:

    model(input_ids (1, T), cu_seqlens=cu, labels=labels, loss_weights=w) -> loss = sum_t w_t CE_t, logits None

  1. attention: the model is loaded with attn_implementation="longalign" (AttentionInterface.register). In a
     packed forward every attention call gets the row's Layout as the `longalign_layout` kwarg (transformers hands
     extra forward kwargs down to it unchanged) and runs longalign/attention.py's packed backends: block-diagonal,
     positions restarting per sequence, honouring the family's `scaling`, `sliding_window` and `softcap`.
     Anything else (generate(), padded rows) goes to transformers' own sdpa (eager for softcapping families).
  2. masks: "longalign" in AttentionMaskInterface builds transformers' own mask for those other forwards, and
     none in a packed one (no (T, T) mask: the cost grows with sum(l_i^2) on SDPA, O(T) with a kernel).
  3. the loss: get_decoder() gives the final hidden states (after the last norm), the output layer
     (get_output_embeddings(), swapped for an `OutputLayer` that is the same Linear for every stock call) computes
     longalign/loss.py's fused output layer + weighted cross-entropy: no (T, V) fp32 logits. The family's
     final-logit processing is reproduced: Cohere logit_scale and Granite logits_scaling scale the hidden states
     (linear), Gemma-2's final_logit_softcapping runs inside the fused loss.

Sequence parallelism: each attention module gets the `sequence_parallel` slot of the model files, which
longalign/sequence_parallel.py fills with DeepSpeed's all-to-all around our packed attention.

The wrapped class is a subclass of the family's own class with the SAME name, so save_pretrained writes the
family's config.json and state dict (architectures: ["Qwen3ForCausalLM"]) and stock transformers loads it back.
Anything the packed path cannot honour raises ValueError in one sentence naming the family and what to do
(`unsupported` says it before the first step; docs/models.md lists them).
"""

import contextvars
import importlib

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longalign.attention import (
    Layout,
    attention,
    current_backend,
    pack_segments,
    position_ids_from_cu_seqlens,
)
from longalign.loss import LMHead

NAME = "longalign"                     # the attn_implementation wrapped models are loaded with
LAYOUT = "longalign_layout"            # the kwarg that carries a packed forward's Layout to every attention call
_packed = contextvars.ContextVar("longalign_packed", default=False)  # True while a packed forward builds masks


# ---------------------------------------------------------------------------------------------
# 1-2. Attention and masks, registered once per process under NAME

def _stock_is_eager(config) -> bool:
    """Attention softcapping (Gemma-2) and sinks (gpt-oss) are exact only in transformers' eager attention."""
    return getattr(config, "attn_logit_softcapping", None) is not None or config.model_type == "gpt_oss"


def _mask(*args, config=None, **kwargs):
    if _packed.get():
        return None  # a packed forward: attention builds its own block-diagonal pattern from the Layout
    return (eager_mask if _stock_is_eager(config) else sdpa_mask)(*args, config=config, **kwargs)


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                     softcap=None, s_aux=None, longalign_layout: Layout | None = None, **kwargs):
    """transformers' attention call: query (B, H, T, D), key/value (B, H_kv, T, D) -> ((B, T, H, D), None).
    Under sequence parallelism (module.sequence_parallel, set by longalign/sequence_parallel.py) T is this rank's
    slice: DeepSpeed's all-to-all gives it the full row of H/N heads, our packed attention runs there."""
    sp = getattr(module, "sequence_parallel", None)
    if longalign_layout is None and sp is None:  # not packed: transformers' own attention, on transformers' own mask
        if _stock_is_eager(module.config):
            stock = importlib.import_module(type(module).__module__).eager_attention_forward
        else:
            stock = ALL_ATTENTION_FUNCTIONS["sdpa"]
        extra = {k: v for k, v in (("sliding_window", sliding_window), ("softcap", softcap), ("s_aux", s_aux)) if v is not None}
        return stock(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **extra, **kwargs)
    family = module.config.model_type
    if why := pack_refusal(family, s_aux is not None, not getattr(module, "is_causal", True), dropout):
        raise ValueError(why)
    if softcap and not (current_backend().takes(query) and current_backend().softcap):
        raise ValueError(softcap_refusal(family, softcap))
    if sp is not None:
        return sp(query, key, value, kwargs["position_ids"], longalign_layout, scale=scaling, window=sliding_window,
                  softcap=softcap), None
    return attention(query, key, value, scaling, longalign_layout, window=sliding_window, softcap=softcap), None


def pack_refusal(family: str, sinks: bool, bidirectional: bool, dropout: float) -> str | None:
    """What a packed forward cannot honour (train.py's check before the first step and the attention call agree)."""
    what, fix = (("attention sinks (s_aux)", "train it with --batch_method naive or sort") if sinks else
                 ("bidirectional attention", "set use_bidirectional_attention to false in config.json") if bidirectional
                 else (f"attention dropout ({dropout})", "set attention_dropout to 0 in config.json") if dropout
                 else (None, None))
    return None if what is None else f"{family} {what} is not supported in a packed forward: {fix}"


def softcap_refusal(family: str, softcap: float) -> str:
    return (f"{family} attention softcapping ({softcap}) needs flash-attn's kernel, which this run does not use "
            f"({current_backend().name}): install flash-attn and train in bf16 on a GPU")


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, _mask)


# ---------------------------------------------------------------------------------------------
# 3. The output layer and the wrapped class

class OutputLayer(LMHead):
    """The family's output Linear (same weight, same name) that also computes the fused loss: called as the stock
    model calls it, it returns logits; called with labels / shift_labels, the loss (ZeRO-3 gathers its weight for
    exactly that call, because the loss runs inside this module's forward)."""

    def forward(self, hidden_states, **loss_kwargs):
        if not loss_kwargs:
            return torch.nn.functional.linear(hidden_states, self.weight)
        return super().forward(hidden_states, **loss_kwargs)[0]


def logit_multiplier(config) -> float:
    """The linear part of the family's final-logit processing: Cohere logits * logit_scale, Granite logits /
    logits_scaling (applied to the hidden states, so the fused loss needs no logits)."""
    return getattr(config, "logit_scale", None) or 1 / (getattr(config, "logits_scaling", None) or 1)


def unsupported(model, packed: bool) -> str | None:
    """The one sentence that stops train.py before its first step (from the config), or None."""
    config = model.config.get_text_config()  # (a multimodal wrapper's language model: its own config)
    family = config.model_type
    if not packed:
        return None  # every other forward runs transformers' own attention
    if getattr(config, "attn_logit_softcapping", None) and not current_backend().softcap:
        return softcap_refusal(family, config.attn_logit_softcapping)
    sinks = any(name.endswith("sinks") for name, _ in model.named_parameters())
    return pack_refusal(family, sinks, getattr(config, "use_bidirectional_attention", False),
                        getattr(config, "attention_dropout", 0.0))


def check_rope(config, lengths: list[int], num_sequences: int, sequence_parallel: bool = False) -> None:
    """RoPE types that pick their frequencies from the row's longest position (max(position_ids) + 1, once for the
    whole row, the padding tail included) give each sequence of a pack its own frequencies only when the choice
    is the one it makes alone: Phi-3 LongRoPE when every sequence is on the row's side of
    original_max_position_embeddings, dynamic NTK when no segment exceeds max_position_embeddings. Otherwise a
    ValueError (a sequence alone would see other frequencies). Under sequence parallelism each rank decides from
    its own slice's positions, so neither type is exact there."""
    params = getattr(config, "rope_parameters", None) or {}
    for p in (params.values() if all(isinstance(v, dict) for v in params.values()) and params else [params]):
        if sequence_parallel and p.get("rope_type") in ("longrope", "dynamic"):
            raise ValueError(f"{config.model_type} {p['rope_type']} RoPE picks its frequencies from each rank's slice "
                             "under sequence parallelism, not per sequence: train without --sequence_parallel_size")
        if p.get("rope_type") == "longrope" and lengths:
            limit = p.get("original_max_position_embeddings") or config.max_position_embeddings
            if any((n > limit) != (max(lengths) > limit) for n in lengths[:num_sequences]):
                raise ValueError(f"{config.model_type} LongRoPE picks short or long factors per row: this pack mixes "
                                 f"sequences of at most and over {limit} tokens (original_max_position_embeddings), "
                                 "which alone would get different factors: train with --batch_method sort")
        if p.get("rope_type") == "dynamic" and lengths and max(lengths) > config.max_position_embeddings:
            raise ValueError(f"{config.model_type} dynamic RoPE rescales per row: a pack with a sequence over "
                             f"{config.max_position_embeddings} tokens is not exact; train with --batch_method sort")


class PackedCausalLM:
    """Mixed in before the family's class (see `wrap`): our forward for training, the stock one otherwise."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        head = self.get_output_embeddings()
        if type(head) is not torch.nn.Linear or head.bias is not None:
            raise ValueError(f"{config.model_type}'s output layer is {type(head).__name__} with a bias or not a "
                             "Linear: the fused loss cannot stand in for it")
        layer = OutputLayer(head.in_features, head.out_features)
        layer.weight = head.weight  # the same Parameter: its initialisation, dtype, device and tying are kept
        self.set_output_embeddings(layer)
        for module in self.modules():  # the slot longalign/sequence_parallel.py fills with its Ulysses wrapper
            if hasattr(module, "scaling") and hasattr(module, "head_dim") and hasattr(module, "is_causal"):
                module.sequence_parallel = None

    def forward(self, input_ids=None, cu_seqlens=None, position_ids=None, attention_mask=None, labels=None,
                loss_weights=None, shift_labels=None, shift_loss_weights=None, inputs_embeds=None,
                row_cu_seqlens=None, **kwargs):
        """See the module docstring; under sequence parallelism a rank's slice (longalign/sequence_parallel.py's
        shard_batch: position_ids, shift_labels, shift_loss_weights and the full row's `row_cu_seqlens`)."""
        sequence_parallel = any(getattr(m, "sequence_parallel", None) is not None for m in self.modules())
        if cu_seqlens is None and labels is None and shift_labels is None and not sequence_parallel:
            if loss_weights is not None:
                raise ValueError("loss_weights need labels (or shift_labels)")
            return super().forward(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                   inputs_embeds=inputs_embeds, **kwargs)             # generate(), logits
        for key in ("num_items_in_batch", "logits_to_keep", "use_cache", "past_key_values"):
            kwargs.pop(key, None)  # the Trainer's and generate()'s keys: a training forward has no cache
        x = input_ids if input_ids is not None else inputs_embeds
        packed = cu_seqlens is not None or row_cu_seqlens is not None
        lengths, num_sequences = [], 0                                                # of the row's segments
        if packed:  # a pack, or under sequence parallelism this rank's slice of one (the segments of the full row)
            row = row_cu_seqlens if cu_seqlens is None else cu_seqlens
            segments = pack_segments(row, x.shape[1] if cu_seqlens is not None else None, x.device)
            if position_ids is None:
                position_ids = position_ids_from_cu_seqlens(segments)                 # (1, T), restart per sequence
            kwargs[LAYOUT] = Layout(segments=segments)
            lengths = [b - a for a, b in zip(segments.bounds, segments.bounds[1:], strict=False)]  # + padding tail
            num_sequences = row.numel() - 1
        config = self.config.get_text_config()  # the language model's (itself for a text-only family)
        check_rope(config, lengths, num_sequences, sequence_parallel)
        if sequence_parallel and position_ids is None:
            raise ValueError("sequence parallelism needs this rank's position_ids (shard_batch adds them)")
        token = _packed.set(packed or sequence_parallel)  # no transformers mask: our attention builds its own
        try:
            hidden = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                        inputs_embeds=inputs_embeds, use_cache=False, **kwargs).last_hidden_state
        finally:
            _packed.reset(token)
        multiplier = logit_multiplier(config)
        if multiplier != 1:
            hidden = hidden * multiplier                                              # (B, T, C)
        head = self.get_output_embeddings()
        if labels is None and shift_labels is None:                                   # packed logits
            logits = head(hidden)
            if getattr(config, "final_logit_softcapping", None):
                cap = config.final_logit_softcapping
                logits = cap * torch.tanh(logits / cap)
            return CausalLMOutputWithPast(logits=logits)
        loss = head(hidden, labels=labels, loss_weights=loss_weights, cu_seqlens=cu_seqlens, shift_labels=shift_labels,
                    shift_loss_weights=shift_loss_weights, softcap=getattr(config, "final_logit_softcapping", None))
        return CausalLMOutputWithPast(loss=loss)


_WRAPPED: dict[type, type] = {}


def wrap(cls: type) -> type:
    """The family's causal-LM class with our forward, under the family's own class name."""
    if cls not in _WRAPPED:
        _WRAPPED[cls] = type(cls.__name__, (PackedCausalLM, cls), {"__module__": __name__})
    return _WRAPPED[cls]


def why_not(cls: type) -> str | None:
    """None when `wrap` works for this transformers class, else the reason (for load_model's refusal)."""
    if getattr(cls, "is_encoder_decoder", False) or getattr(cls.config_class, "is_encoder_decoder", False):
        return "it is an encoder-decoder"
    if not cls._supports_attention_backend:
        return "its attention does not go through transformers' AttentionInterface"
    return None
