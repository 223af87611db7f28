"""llama_flash_attn_monkey_patch.py: the patched stock Llama gives the unpatched logits and generations."""

import warnings

import pytest
import torch
import transformers

import llama_flash_attn_monkey_patch as patch


@pytest.fixture
def model_and_input(tiny_llama_dir):
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, torch.randint(0, model.config.vocab_size, (1, 50), generator=torch.Generator().manual_seed(0))


def test_patched_forward_equals_stock(model_and_input):
    model, x = model_and_input
    with torch.no_grad():
        expected, expected_gen = model(x).logits, model.generate(x, max_new_tokens=8, do_sample=False)
    assert patch.replace_llama_attn(force=True)  # on CPU: the same forward over SDPA instead of flash-attn
    try:
        assert transformers.models.llama.modeling_llama.LlamaAttention.forward is patch._patched_forward
        with torch.no_grad():
            assert (model(x).logits - expected).abs().max() <= 1e-5
            assert torch.equal(model.generate(x, max_new_tokens=8, do_sample=False), expected_gen)  # KV cache path
            # negative control: attention that is not causal changes the logits
            original = patch._flash_or_sdpa
            patch._flash_or_sdpa = lambda q, k, v, s: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, scale=s, enable_gqa=True).transpose(1, 2)
            try:
                assert (model(x).logits - expected).abs().max() > 1e-3
            finally:
                patch._flash_or_sdpa = original
    finally:
        patch.restore_llama_attn()


@pytest.mark.skipif(torch.cuda.is_available() and patch.HAS_FLASH_ATTN, reason="flash-attn present")
def test_without_flash_attn_it_warns_once_and_changes_nothing(model_and_input):
    patch._warned = False
    with pytest.warns(UserWarning, match="flash-attn or CUDA is missing"):
        assert patch.replace_llama_attn() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert patch.replace_llama_attn() is False  # the second call is silent
    assert transformers.models.llama.modeling_llama.LlamaAttention.forward is patch._ORIGINAL_FORWARD
