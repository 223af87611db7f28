"""Make stock transformers Llama attend with FlashAttention-2, for memory-saving long-context inference.

Run as (before loading the model, e.g. in an evaluation script):
    from llama_flash_attn_monkey_patch import replace_llama_attn
    replace_llama_attn()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()

What it changes: `transformers.models.llama.modeling_llama.LlamaAttention.forward`, process-wide.
Unpadded batches (the usual single long prompt, and every decoding step with the KV cache) go
through `flash_attn_func(causal=True)`, which never builds the (T, T) score matrix; a padded batch
keeps the original forward. Without CUDA or flash-attn it warns once and changes nothing (pass
`force=True` to install the same forward on top of PyTorch's SDPA; the tests do, on CPU).
Inputs: none. Outputs: True when the patch is installed.
"""

import warnings

import torch
from transformers.models.llama import modeling_llama as hf_llama

from longalign.attention import HAS_FLASH_ATTN, attention

_ORIGINAL_FORWARD = hf_llama.LlamaAttention.forward
_warned = False


def _flash_or_sdpa(q, k, v, scale):
    """q: (B, H, Tq, D), k/v: (B, H_kv, Tk, D) -> (B, Tq, H, D), causal, aligned to the last key."""
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func

        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               softmax_scale=scale, causal=True)
    return attention(q, k, v, scale)


def _patched_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    cache = cache if cache is not None else kwargs.pop("past_key_values", None)
    if attention_mask is not None:  # padding (or another 4-D mask): the original path handles it
        return _ORIGINAL_FORWARD(self, hidden_states, position_embeddings, attention_mask, cache, **kwargs)
    B, T, _ = hidden_states.shape
    q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
    k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
    v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
    q, k = hf_llama.apply_rotary_pos_emb(q, k, *position_embeddings)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)
    y = _flash_or_sdpa(q, k, v, self.scaling)                                      # (B, T, H, D)
    return self.o_proj(y.reshape(B, T, -1)), None


def replace_llama_attn(force: bool = False) -> bool:
    """Install the flash-attn forward on transformers' LlamaAttention; False (and a warning) if it cannot."""
    global _warned
    if not force and not (HAS_FLASH_ATTN and torch.cuda.is_available()):
        if not _warned:
            warnings.warn("flash-attn or CUDA is missing: replace_llama_attn() leaves transformers' Llama "
                          "attention as it is.", stacklevel=2)
            _warned = True
        return False
    hf_llama.LlamaAttention.forward = _patched_forward
    return True


def restore_llama_attn() -> None:
    """Undo replace_llama_attn()."""
    hf_llama.LlamaAttention.forward = _ORIGINAL_FORWARD
