"""Any transformers decoder-only causal LM with our forward contract (longalign/any_model.py), against the stock
model of transformers 5.24 as the independent reference; tiny random fp32 configs of transformers' own classes.

Per family: a packed row of 3 sequences (+ a 2-token padding tail) with cu_seqlens == each sequence alone through
the stock model (eager attention) in logits and in the gradients of the weighted loss; the weighted loss == the
brute-force sum_t w_t CE_t from the stock model's logits (its final-logit processing included); negative control:
the same row without cu_seqlens differs. Refusals are one sentence. `pytest -s` prints the PARITY figures."""

import copy

import pytest
import torch
import transformers
from fake_kernels import kernels

from longalign import IGNORE_INDEX, any_model
from longalign.models import load_model

V = 96
LENGTHS, TAIL = (7, 5, 9), 2  # windows of 6 below: the 7- and 9-token sequences are longer than the window
WINDOW = 6


def tiny_config(family: str, **overrides):
    sizes = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0)
    return transformers.AutoConfig.for_model(family, **{**sizes, **overrides})


def tiny(family: str, **overrides):
    """A random 2-layer model of `family` (transformers' own config and model class), fp32."""
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).float().eval()


# family -> config overrides that switch on what the family is known for
FAMILIES = {
    "qwen3": {},
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 0},
    "llama": {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 4}},
    "mistral": {"sliding_window": WINDOW},
    "gemma3_text": {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"],
                    "query_pre_attn_scalar": 24},
    "phi3": {"pad_token_id": 0},
    "olmo2": {},
    "smollm3": {},
    "glm4": {},
    "granite": {"logits_scaling": 4.0, "attention_multiplier": 0.3, "residual_multiplier": 0.5,
                "embedding_multiplier": 2.0},
    "cohere2": {"logit_scale": 0.5, "sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]},
    "phi3-longrope": {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5, 2.0, 3.0],
                                          "long_factor": [2.0, 3.0, 5.0, 7.0]},
                      "original_max_position_embeddings": 4},  # every sequence over 4 tokens: long factors, as alone
}


def wrapped_twin(stock):
    """Our wrapped class of the stock model's family with the stock model's weights."""
    config = copy.deepcopy(stock.config)  # its own config: the stock model keeps its attention implementation
    ours = any_model.wrap(type(stock))._from_config(config, attn_implementation=any_model.NAME)
    assert ours.config._attn_implementation == any_model.NAME != stock.config._attn_implementation
    ours.load_state_dict(stock.state_dict())
    return ours.float().eval()


def packed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(LENGTHS) + TAIL
    x = torch.randint(1, V, (1, T), generator=g)
    labels = x.clone()
    labels[:, torch.rand(T, generator=g) < 0.3] = IGNORE_INDEX
    labels[:, sum(LENGTHS):] = IGNORE_INDEX
    weights = torch.rand(1, T, generator=g) + 0.1
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return x, cu, labels, weights


def per_sequence_reference(stock, x, cu, labels, weights):
    """Stock logits of each sequence alone, and the brute-force sum_t w_t CE_t over them (float64)."""
    logits, loss = [], 0
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        z = stock(x[:, s:e]).logits[0]                                      # (l_i, V), final-logit processing included
        y, w = labels[0, s + 1:e], weights[0, s + 1:e]                      # position t predicts token t + 1
        keep = y != IGNORE_INDEX
        ce = torch.nn.functional.cross_entropy(z[:-1][keep].double(), y[keep], reduction="none")
        loss = loss + (w[keep].double() * ce).sum()
        logits.append(z)
    return torch.cat(logits), loss


def rel_grad(a, b) -> float:
    ga = torch.cat([p.grad.flatten().double() for _, p in sorted(a.named_parameters()) if p.grad is not None])
    gb = torch.cat([p.grad.flatten().double() for _, p in sorted(b.named_parameters()) if p.grad is not None])
    assert ga.numel() == gb.numel()
    return float((ga - gb).norm() / gb.norm())


def parity(family: str, **overrides):
    """(logits diff, control diff, loss rel diff, grad rel diff) of our packed row vs the stock model."""
    stock = tiny(family.split("-")[0], **{**FAMILIES[family], **overrides})
    stock.config._attn_implementation = "eager"  # the reference: transformers' plainest attention
    ours = wrapped_twin(stock)
    x, cu, labels, weights = packed_batch()
    n = sum(LENGTHS)
    with torch.no_grad():
        packed = ours(x, cu_seqlens=cu).logits[0, :n]
        control = ours(x).logits[0, :n]                                    # no cu_seqlens: one long sequence
        plain = ours(x[:, :LENGTHS[0]]).logits[0]                          # a plain forward stays transformers'
    ref_logits, ref_loss = per_sequence_reference(stock, x, cu, labels, weights)
    assert (plain - ref_logits[:LENGTHS[0]].detach()).abs().max() <= 1e-5
    loss = ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss
    loss.backward()
    ref_loss.backward()
    loss, ref_loss, ref_logits = float(loss.detach()), float(ref_loss.detach()), ref_logits.detach()
    return (float((packed - ref_logits).abs().max()), float((control - ref_logits).abs().max()),
            abs(loss - ref_loss) / ref_loss, rel_grad(ours, stock))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_row_and_weighted_loss_equal_the_stock_model(family):
    logits, control, loss, grad = parity(family)
    print(f"\nPARITY {family}: packed logits max|diff| {logits:.1e}, weighted loss rel {loss:.1e}, grads rel "
          f"{grad:.1e}; control without cu_seqlens {control:.1e}")
    assert logits <= 1e-5 and loss <= 1e-6 and grad <= 1e-5
    assert control > 1e-2


def test_sliding_window_through_the_kernel_doubles():
    """gemma3's sliding layers through the varlen_attn double (window_size=(w - 1, 0)) and flash-attn's."""
    for flash in (None, "fake"):
        with kernels(flash=flash, allow_fp32=True) as backend:
            from fake_kernels import RECORD

            logits, control, loss, grad = parity("gemma3_text")
            print(f"\nPARITY gemma3_text via {backend.name}: logits {logits:.1e}, loss rel {loss:.1e}, grads rel {grad:.1e}")
            assert logits <= 1e-5 and loss <= 1e-6 and grad <= 1e-5 and control > 1e-2 and RECORD.calls > 0


def test_the_window_is_honoured():
    """Negative control: the same mistral with its window widened on our side only (no sequence longer than it)
    no longer matches the stock model, so the band the parity tests see is really applied."""
    stock = tiny("mistral", **FAMILIES["mistral"])
    stock.config._attn_implementation = "eager"
    ours = wrapped_twin(stock)
    ours.config.sliding_window = 100
    x, cu, labels, weights = packed_batch()
    ref_logits, _ = per_sequence_reference(stock, x, cu, labels, weights)
    with torch.no_grad():
        diff = float((ours(x, cu_seqlens=cu).logits[0, :sum(LENGTHS)] - ref_logits).abs().max())
    print(f"\nPARITY control: mistral window {WINDOW} ignored: packed logits max|diff| {diff:.1e}")
    assert diff > 1e-3


def test_gemma2_softcapping_exact_with_flash_attn_attention_refused_without():
    stock = tiny("gemma2", sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
                 attn_logit_softcapping=5.0, final_logit_softcapping=0.3)
    stock.config._attn_implementation = "eager"
    ours = wrapped_twin(stock)
    x, cu, labels, weights = packed_batch()
    with torch.no_grad():
        ref_logits, _ = per_sequence_reference(stock, x, cu, labels, weights)
    with pytest.raises(ValueError, match=r"^gemma2 attention softcapping \(5.0\) needs flash-attn's kernel"):
        ours(x, cu_seqlens=cu)
    with torch.no_grad():  # a plain forward is transformers' eager attention, softcapping included
        assert float((ours(x[:, :LENGTHS[0]]).logits[0] - ref_logits[:LENGTHS[0]]).abs().max()) <= 1e-5
    with kernels(flash="fake", allow_fp32=True):
        packed = ours(x, cu_seqlens=cu).logits[0, :sum(LENGTHS)].detach()
        diff = float((packed - ref_logits).abs().max())
        loss = ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss  # final softcap in the fused loss
        ref_logits, ref_loss = per_sequence_reference(stock, x, cu, labels, weights)
        loss.backward()
        ref_loss.backward()
        loss_rel = abs(float(loss.detach()) - float(ref_loss.detach())) / float(ref_loss.detach())
        grad = rel_grad(ours, stock)
        print(f"\nPARITY gemma2 (attention + final softcapping, fake flash-attn): packed logits max|diff| {diff:.1e}, "
              f"weighted loss rel {loss_rel:.1e}, grads rel {grad:.1e}")
        assert diff <= 1e-5 and loss_rel <= 1e-6 and grad <= 1e-5
        ours.config.final_logit_softcapping = None  # control: the loss without the final softcap
        with torch.no_grad():
            control = float(ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss)
        control = abs(control - float(ref_loss.detach())) / float(ref_loss.detach())
        print(f"PARITY control: gemma2 loss without the final softcap: rel {control:.1e}")
        assert control > 1e-4  # (tiny random logits stay small: the cap of 0.3 is what makes them differ)


def test_phi3_longrope_refuses_a_pack_that_mixes_short_and_long():
    stock = tiny("phi3", **FAMILIES["phi3-longrope"])
    ours = wrapped_twin(stock)
    x = torch.randint(1, V, (1, 9))
    with pytest.raises(ValueError, match="phi3 LongRoPE picks short or long factors per row: this pack mixes"):
        ours(x, cu_seqlens=torch.tensor([0, 3, 9], dtype=torch.int32))  # 3 <= 4 < 6


def test_a_model_without_our_contract_refuses_packing_and_weights(tmp_path, capsys):
    torch.manual_seed(0)
    transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=V, hidden_size=16, n_layer=1, n_head=2)
                                  ).save_pretrained(tmp_path / "bloom")
    model = load_model(tmp_path / "bloom")
    x = torch.randint(0, V, (1, 12))
    model(x)  # a plain forward still works
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    sentence = "bloom models cannot take packing (cu_seqlens) or loss weights here (its attention does not go"
    for kwargs in ({"cu_seqlens": cu}, {"labels": x, "loss_weights": torch.ones(1, 12)}):
        with pytest.raises(ValueError, match=sentence.replace("(", r"\(").replace(")", r"\)")):
            model(x, **kwargs)
    capsys.readouterr()
    import train  # (imported here: tests/test_any_model_sp.py's worker processes import this file)

    # train.py stops before it reads the data or loads the model: every batch it builds carries loss weights
    with pytest.raises(SystemExit) as e:
        train.main(["--model_name_or_path", str(tmp_path / "bloom"), "--train_dir", str(tmp_path / "none"),
                    "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--batch_method", "pack"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and sentence in err[0], err


@pytest.mark.parametrize("family,overrides,packed,start", [
    ("gemma2", {}, True, "gemma2 attention softcapping (50.0) needs flash-attn's kernel"),
    ("gemma2", {}, False, None),   # unpacked: transformers' eager attention; final softcapping in the fused loss
    ("gemma3_text", {"use_bidirectional_attention": True}, True,
     "gemma3_text bidirectional attention is not supported in a packed forward: set use_bidirectional_attention"),
    ("qwen3", {"attention_dropout": 0.1}, True, "qwen3 attention dropout (0.1) is not supported in a packed forward"),
    ("qwen3", {"attention_dropout": 0.1}, False, None),
    ("qwen3", {}, True, None),
])
def test_what_train_py_refuses_before_the_first_step(family, overrides, packed, start):
    why = any_model.unsupported(wrapped_twin(tiny(family, **overrides)), packed)
    assert why == start if start is None else why.startswith(start), why


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_padded_rows_and_checkpointing(family):
    """naive / sort batches: right-padded rows with an attention_mask go through transformers' own attention and
    mask, and the weighted loss (and its gradients) equals the brute force over each row alone; a packed row under
    activation checkpointing gives the gradients it gives without."""
    stock = tiny(family, **FAMILIES[family])
    stock.config._attn_implementation = "eager"
    ours = wrapped_twin(stock)
    g = torch.Generator().manual_seed(2)
    lengths = (9, 5)
    x = torch.randint(1, V, (2, 9), generator=g)
    mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    labels = torch.where(mask.bool(), x, IGNORE_INDEX)
    weights = torch.rand(2, 9, generator=g) * mask
    loss = ours(x, attention_mask=mask, labels=labels, loss_weights=weights).loss
    ref = sum(per_sequence_reference(stock, x[b:b + 1, :n], torch.tensor([0, n]), labels[b:b + 1, :n],
                                     weights[b:b + 1, :n])[1] for b, n in enumerate(lengths))
    loss.backward()
    ref.backward()
    loss_rel, grad = abs(float(loss.detach()) - float(ref.detach())) / float(ref.detach()), rel_grad(ours, stock)
    print(f"\nPARITY {family} padded rows: weighted loss rel {loss_rel:.1e}, grads rel {grad:.1e}")
    assert loss_rel <= 1e-6 and grad <= 1e-5

    x, cu, labels, weights = packed_batch()
    grads = []
    for checkpointing in (False, True):  # (train.py --activation_checkpointing true)
        ours.zero_grad()
        if checkpointing:
            ours.activation_checkpointing_enable()
            ours.train()
        ours(x, cu_seqlens=cu, labels=labels, loss_weights=weights).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-7)
