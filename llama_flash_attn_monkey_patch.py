"""Make stock transformers Llama attend with FlashAttention-2, for memory-saving long-context inference.

Run as (before loading the model, e.g. in an evaluation script):
    from llama_flash_attn_monkey_patch import replace_llama_attn
    replace_llama_attn()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()

What it changes: `transformers.models.llama.modeling_llama.LlamaAttention.forward`, process-wide.
Unpadded batches (the usual single long prompt, and every decoding step with a dynamic KV cache) go
through the varlen kernel longalign/attention.py chose (flash-attn's, else PyTorch's own `varlen_attn`),
causal and aligned to the last key, which never builds the (T, T) score matrix. Where that would not be
exact it declines, says so once, and transformers' own attention runs that forward:
  * a 4-D attention mask: a padded batch, or new tokens after cached ones when transformers builds a mask;
  * a static KV cache (`cache_implementation="static"`): its keys include the empty slots, which only a
    mask hides, and transformers 5.24 passes no mask for a static-cache prefill (it relies on SDPA's
    top-left causal rule, which the kernels do not follow).
Without a kernel (no CUDA, or none runs) it warns once and changes nothing (pass `force=True` to install
the same forward on top of PyTorch's SDPA; the tests do, on CPU).
Inputs: none. Outputs: True when the patch is installed.
"""

import warnings

from transformers.models.llama import modeling_llama as hf_llama

from longalign.attention import causal_last_queries, current_backend

_ORIGINAL_FORWARD = hf_llama.LlamaAttention.forward
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        warnings.warn(message, stacklevel=3)


def _declines(attention_mask, cache) -> str | None:
    """Why the patched forward would not be exact for this call (transformers' own attention runs), or None."""
    if attention_mask is not None:
        return "a 4-D attention mask (padding, or new tokens after cached ones)"
    if cache is not None and cache.is_compileable:
        return "a static KV cache (its keys include empty slots that only a mask hides)"
    return None


def _patched_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    cache = cache if cache is not None else kwargs.pop("past_key_values", None)
    reason = _declines(attention_mask, cache)
    if reason is not None:
        _say_once(f"replace_llama_attn: {reason}: transformers' own attention runs these forwards.")
        return _ORIGINAL_FORWARD(self, hidden_states, position_embeddings, attention_mask, cache, **kwargs)
    B, T, _ = hidden_states.shape
    q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
    k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
    v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
    q, k = hf_llama.apply_rotary_pos_emb(q, k, *position_embeddings)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)                                  # (B, H_kv, past + T, D)
    y = causal_last_queries(q, k, v, self.scaling)                                 # (B, T, H, D)
    return self.o_proj(y.reshape(B, T, -1)), None


def replace_llama_attn(force: bool = False) -> bool:
    """Install the kernel forward on transformers' LlamaAttention; False (and a warning, once) if no kernel runs."""
    if not force and current_backend().kernel is None:
        _say_once("no FlashAttention kernel runs here (no CUDA, or flash-attn / torch varlen_attn fail): "
                  "replace_llama_attn() leaves transformers' Llama attention as it is.")
        return False
    hf_llama.LlamaAttention.forward = _patched_forward
    return True


def restore_llama_attn() -> None:
    """Undo replace_llama_attn()."""
    hf_llama.LlamaAttention.forward = _ORIGINAL_FORWARD
