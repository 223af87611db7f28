"""llama_flash_attn_monkey_patch.py: the patched stock Llama generates what the unpatched one does, token for token.

Greedy generation on a tiny random Llama with every KV cache transformers 5.24 offers (dynamic, static; their
offloaded variants need CUDA), a left-padded batch of 2, and a prefill after cached tokens. On CPU the patch is forced on
(SDPA underneath; with the fake kernels of tests/fake_kernels.py, the kernel call itself in bf16). Where the patch
cannot be exact it must decline, once per reason; the control shows what a static cache did before it declined.
"""

import copy
import warnings

import pytest
import torch
import transformers
from fake_kernels import RECORD, kernels
from transformers.cache_utils import DynamicCache

import llama_flash_attn_monkey_patch as patch

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading caches move layers off a GPU")
CACHES = ["dynamic", "static", pytest.param("offloaded", marks=ON_CUDA), pytest.param("offloaded_static", marks=ON_CUDA)]


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.fixture
def patched():
    patch._said.clear()
    assert patch.replace_llama_attn(force=True)  # on CPU: the same forward over SDPA instead of a kernel
    assert transformers.models.llama.modeling_llama.LlamaAttention.forward is patch._patched_forward
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            yield said
    finally:
        patch.restore_llama_attn()


def ids(B, T, seed=0, vocab=1024):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def generate(model, x, **kw):
    with torch.no_grad():
        return model.generate(x, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0, **kw)


def declines(said) -> list[str]:
    return [str(w.message) for w in said if "replace_llama_attn" in str(w.message)]


@pytest.mark.parametrize("cache", CACHES)
def test_greedy_tokens_equal_stock(model, cache, patched):
    patch.restore_llama_attn()  # the stock run first
    x = ids(1, 40)
    expected = generate(model, x, cache_implementation=cache)
    patch.replace_llama_attn(force=True)
    got = generate(model, x, cache_implementation=cache)
    print(f"PATCH greedy {cache} cache: {int((got == expected).all(0).sum())}/{got.shape[1]} tokens equal; "
          f"declined: {declines(patched) or 'never'}")
    assert torch.equal(got, expected)
    said = declines(patched)
    assert len(said) == len(set(said))  # each reason said once, not per layer or step
    assert any("static KV cache" in m for m in said) if cache.endswith("static") else not said


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_padded_batch_of_two(model, cache, patched):
    x = ids(2, 30, seed=1)
    mask = torch.ones_like(x)
    mask[1, :9] = 0  # row 1 left-padded by 9
    patch.restore_llama_attn()
    expected = generate(model, x, attention_mask=mask, cache_implementation=cache)
    patch.replace_llama_attn(force=True)
    got = generate(model, x, attention_mask=mask, cache_implementation=cache)
    print(f"PATCH greedy padded batch of 2, {cache} cache: {int((got == expected).all(0).sum())}/{got.shape[1]} "
          f"tokens equal; declined: {declines(patched)}")
    assert torch.equal(got, expected)
    said = declines(patched)
    assert said and len(said) == len(set(said))  # padding: declined, each reason said once


def test_prefill_after_cached_tokens(model, patched):
    """generate() continuing a cache that already holds the first 25 tokens: a 15-token prefill after them."""
    x = ids(1, 40, seed=2)

    def run():
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(x[:, :25], past_key_values=cache, use_cache=True)
            logits = model(x[:, 25:], past_key_values=copy.deepcopy(cache), use_cache=True).logits
        return logits, generate(model, x, past_key_values=cache)

    patch.restore_llama_attn()
    expected_logits, expected = run()
    patch.replace_llama_attn(force=True)
    logits, got = run()
    diff = (logits - expected_logits).abs().max().item()
    print(f"PATCH prefill of 15 after 25 cached tokens: max|dlogits| {diff:.1e}, tokens equal "
          f"{torch.equal(got, expected)}; declined: {declines(patched) or 'never'}")
    assert diff <= 1e-5 and torch.equal(got, expected)


def test_control_static_cache_without_declining_differs(model, monkeypatch, patched):
    """What the patch did before it declined static caches: the prompt attends to the empty cache slots."""
    x = ids(1, 40)
    patch.restore_llama_attn()
    expected = generate(model, x, cache_implementation="static")
    with torch.no_grad():
        stock_prefill = model(x).logits
    patch.replace_llama_attn(force=True)
    monkeypatch.setattr(patch, "_declines", lambda mask, cache: "a 4-D attention mask" if mask is not None else None)
    got = generate(model, x, cache_implementation="static")
    with torch.no_grad():
        cache = transformers.StaticCache(config=model.config, max_cache_len=64)
        prefill = model(x, past_key_values=cache, use_cache=True).logits
    first = int((got[0] != expected[0]).nonzero()[0]) - x.shape[1] if not torch.equal(got, expected) else None
    diff = (prefill - stock_prefill).abs().max().item()
    print(f"PATCH control, static cache not declined: prefill max|dlogits| {diff:.2f}, tokens differ from new "
          f"token {first}")
    assert diff > 1e-2 and first is not None


def test_kernel_call_in_bf16(model, patched):
    """The patched forward through the (fake) varlen kernel: prefill and every decoding step, in bf16."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    x = ids(2, 30, seed=3)
    patch.restore_llama_attn()
    expected = generate(bf16, x)
    with kernels("fake") as backend:
        assert backend.name.startswith("flash-attn")
        patch.replace_llama_attn()  # a kernel "runs": no force needed
        calls = RECORD.calls
        got = generate(bf16, x)
        calls = RECORD.calls - calls
    print(f"PATCH bf16 through the fake flash-attn kernel: {calls} kernel calls, tokens equal {torch.equal(got, expected)}")
    assert calls == 2 * 12 and torch.equal(got, expected)  # 2 layers x (prefill + 11 decoding steps)


def test_without_a_kernel_it_warns_once_and_changes_nothing(model):
    with kernels(flash=None, varlen=None):  # what a CPU machine (or a GPU without a working kernel) sees
        patch._said.clear()
        with pytest.warns(UserWarning, match="no FlashAttention kernel runs here"):
            assert patch.replace_llama_attn() is False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert patch.replace_llama_attn() is False  # the second call is silent
    assert transformers.models.llama.modeling_llama.LlamaAttention.forward is patch._ORIGINAL_FORWARD
