"""modeling_llama.py against stock transformers (the independent reference) on tiny configs."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from longalign import IGNORE_INDEX
from longalign.models import load_model
from modeling_llama import LlamaForCausalLM

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32)
ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
}
VARIANTS = {
    "llama-gqa": ("LlamaConfig", {}),
    "llama-mqa-bias": ("LlamaConfig", {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True}),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    **{f"rope-{k}": ("LlamaConfig", {"rope_parameters": v}) for k, v in ROPE.items()},
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),  # bias on q, k, v but not o
}


def save_reference(path, variant):
    """A random stock transformers model of the variant, saved to `path`; returns it in eval mode."""
    config_name, overrides = VARIANTS[variant]
    config = getattr(transformers, config_name)(**{**TINY, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(stock LlamaForCausalLM, ours) with the same weights, plus the checkpoint folder."""
    path = tmp_path_factory.mktemp("llama")
    ref = save_reference(path, "llama-gqa")
    return ref, LlamaForCausalLM.from_pretrained(path).eval(), path


def ids(*shape, seed=0):
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_transformers(tmp_path, variant):
    ref = save_reference(tmp_path, variant)
    ours = load_model(tmp_path).eval()
    assert isinstance(ours, LlamaForCausalLM)
    x = ids(2, 40)  # 40 > max_position_embeddings 32: dynamic/yarn/llama3 scaling takes effect
    with torch.no_grad():
        diff = (ours(x).logits - ref(x).logits).abs().max().item()
    print(f"PARITY logits vs transformers {variant}: max|diff| {diff:.1e}")  # README figures (pytest -s)
    assert diff <= 1e-5, f"{variant}: max |diff| {diff:.2e}"


def test_negative_control_wrong_rope_differs(tmp_path):
    ref = save_reference(tmp_path, "rope-llama3")
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    ours = LlamaForCausalLM.from_pretrained(tmp_path, config=config).eval()
    x = ids(1, 40)
    with torch.no_grad():
        control = (ours(x).logits - ref(x).logits).abs().max().item()
    print(f"PARITY control (llama3 checkpoint read as default RoPE): max|diff| {control:.1e}")
    assert control > 1e-3


def packed_batch(lengths=(7, 12, 1, 20), seed=1):
    x = ids(1, sum(lengths), seed=seed)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    labels = x.clone()
    labels[0, cu[:-1].long()] = IGNORE_INDEX  # a sequence's first token is never a target
    labels[0, 3:5] = IGNORE_INDEX
    weights = torch.rand(1, x.shape[1], generator=torch.Generator().manual_seed(seed))
    return x, cu, labels, weights


def test_packed_logits_equal_per_sequence(pair):
    _, ours, _ = pair
    x, cu, _, _ = packed_batch()
    bounds = cu.tolist()
    with torch.no_grad():
        packed = ours(x, cu_seqlens=cu).logits
        alone = torch.cat([ours(x[:, s:e]).logits for s, e in zip(bounds[:-1], bounds[1:], strict=False)], dim=1)
        diff, control = (packed - alone).abs().max().item(), (ours(x).logits - alone).abs().max().item()
    print(f"PARITY packed vs per-sequence logits: max|diff| {diff:.1e}; control without cu_seqlens {control:.1e}")
    assert diff <= 1e-5 and control > 1e-3


def test_weighted_loss_equals_brute_force_on_reference_logits(pair):
    ref, ours, _ = pair
    x, cu, labels, weights = packed_batch()
    loss = ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss
    expected, bounds = 0.0, cu.tolist()
    with torch.no_grad():
        for s, e in zip(bounds[:-1], bounds[1:], strict=False):  # stock model, one sequence at a time
            logp = F.log_softmax(ref(x[:, s:e]).logits[0].double(), -1)
            for t in range(s + 1, e):
                if labels[0, t] != IGNORE_INDEX:
                    expected -= weights[0, t].item() * logp[t - s - 1, labels[0, t]].item()
    print(f"PARITY weighted loss vs brute force on transformers logits: |diff| {abs(loss.item() - expected):.1e}")
    assert abs(loss.item() - expected) <= 1e-5 * abs(expected)


def test_mean_loss_equals_transformers_loss(pair):
    ref, ours, _ = pair
    x = ids(2, 30)
    labels = x.clone()
    labels[:, :10] = IGNORE_INDEX
    with torch.no_grad():
        out = ours(x, labels=labels)
        assert out.logits is None  # the loss never materialises all logits
        assert abs(out.loss.item() - ref(x, labels=labels).loss.item()) <= 1e-5


def weighted_grads(model, x, cu, labels, weights, packed, saved=None):
    """Parameter gradients of the weighted loss; `saved` counts the tensors autograd keeps."""
    model.zero_grad()
    count = (lambda t: (saved.append(1), t)[1]) if saved is not None else (lambda t: t)
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        if packed:
            loss = model(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss
        else:
            bounds = cu.tolist()
            loss = sum(model(x[:, s:e], labels=labels[:, s:e], loss_weights=weights[:, s:e]).loss
                       for s, e in zip(bounds[:-1], bounds[1:], strict=False))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_gradients_equal_per_sequence_and_checkpointing(pair):
    _, ours, _ = pair
    ours.train()
    x, cu, labels, weights = packed_batch()
    saved, saved_ckpt = [], []
    packed = weighted_grads(ours, x, cu, labels, weights, packed=True, saved=saved)
    alone = weighted_grads(ours, x, cu, labels, weights, packed=False)
    diff = max((packed[n] - alone[n]).abs().max().item() for n in packed)
    print(f"PARITY packed vs per-sequence gradients (weighted loss): max|diff| {diff:.1e}")
    assert diff <= 1e-5
    ours.activation_checkpointing_enable()  # transformers 5's name for gradient_checkpointing_enable
    try:
        ckpt = weighted_grads(ours, x, cu, labels, weights, packed=True, saved=saved_ckpt)
    finally:
        ours.activation_checkpointing_disable()
        ours.eval()
    assert len(saved_ckpt) < len(saved) / 3  # the layers' activations really were dropped
    assert max((packed[n] - ckpt[n]).abs().max().item() for n in packed) <= 1e-6
    # negative control: the same row without cu_seqlens gives other gradients
    ours.zero_grad()
    ours(x, labels=labels, loss_weights=weights).loss.backward()
    assert max((packed[n] - p.grad).abs().max().item() for n, p in ours.named_parameters()) > 1e-4


def test_round_trip_into_stock_transformers(pair, tmp_path):
    ref, ours, _ = pair
    ours.save_pretrained(tmp_path)
    stock = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = ids(1, 20)
    with torch.no_grad():
        assert (stock(x).logits - ref(x).logits).abs().max() == 0


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_kv_cache_matches_transformers(pair, cache):
    """A static cache hands every slot to attention, the empty ones too: layout.past keeps them out."""
    ref, ours, _ = pair
    x = ids(2, 9)
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # left padding in a batch
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = ref.generate(x, **kw)
        assert torch.equal(ours.generate(x, cache_implementation=cache, **kw), expected)
        assert torch.equal(ours.generate(x[:1], cache_implementation=cache, **{**kw, "attention_mask": None}),
                           ref.generate(x[:1], **{**kw, "attention_mask": None}))
        if cache == "dynamic":
            assert torch.equal(ours.generate(x, use_cache=False, **kw), expected)


@pytest.mark.parametrize("dtype_key", ["dtype", "torch_dtype"])
def test_bf16_loads_and_trains(pair, dtype_key):
    ref, _, path = pair
    model = LlamaForCausalLM.from_pretrained(path, **{dtype_key: torch.bfloat16})
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    x, cu, labels, weights = packed_batch()
    loss = model(x, cu_seqlens=cu, labels=labels, num_items_in_batch=7).loss  # Trainer's extra key ignored
    loss.backward()
    with torch.no_grad():
        fp32 = ref(x, labels=labels).loss  # (not packed: only close, not equal)
    assert torch.isfinite(loss) and model.lm_head.weight.grad.dtype == torch.bfloat16
    assert abs(loss.item() - fp32.item()) < 0.1


def test_load_model_falls_back_to_auto_model(tmp_path):
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    assert type(load_model(tmp_path)).__name__ == "GPT2LMHeadModel"
