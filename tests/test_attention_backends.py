"""longalign/attention.py's backends on CPU, through the test doubles of tests/fake_kernels.py.

- selection: flash-attn when it imports AND runs, else torch's varlen_attn (whatever spelling this torch has),
  else SDPA; a broken flash-attn falls back with one warning; the choice is printed once;
- the doubles really check what they claim to (each precondition broken once must raise);
- the backend table at SP 1 (SP 2 is in test_sequence_parallel.py): logits and gradients through each backend
  equal SDPA's, for Llama (GQA) and ChatGLM (multi-query), bf16 and fp32, with activation checkpointing;
  negative controls: a kernel that is not causal, has another scale or ignores cu_seqlens fails the comparison;
- host syncs: one per packed forward whatever the number of layers, none per generated token.

The table (`[figure]` lines): python -m pytest -q -s tests/test_attention_backends.py tests/test_sequence_parallel.py
"""

import copy
import warnings

import pytest
import torch
from backend_table import BACKENDS, DTYPES, GRAD_TOL, LOGITS_TOL, compare, figure, step, through, within
from fake_kernels import RECORD, Fault, count_host_syncs, flash_attn_varlen_func, kernels, varlen_attn
from test_sequence_parallel import tiny_models
from transformers.cache_utils import DynamicCache

from longalign import IGNORE_INDEX
from longalign import attention as A

LENGTHS = (7, 12, 1, 10)  # a one-token sequence included


@pytest.fixture(scope="module")
def models():
    return tiny_models()  # float64 masters: Llama 4 heads / 2 KV heads, ChatGLM 4 heads / 1 KV group, 2 layers


def packed_row(seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    T = sum(LENGTHS)
    ids = torch.randint(1, 96, (1, T), generator=g)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    labels = ids.clone()
    labels[0, cu[:-1].long()] = IGNORE_INDEX  # a sequence's first token is never a target
    weights = torch.rand(1, T, generator=g)
    return {"input_ids": ids, "cu_seqlens": cu, "labels": labels, "loss_weights": weights}


# ---------------------------------------------------------------------------------------------
# Selection


def test_selection_order_fallbacks_and_one_line(capsys):
    with kernels("fake", "2.13") as backend:
        assert backend.name.startswith("flash-attn") and backend.device_type == "cpu"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with kernels("broken", "2.13") as backend:  # an ImportError of its .so, as when built for another torch
            assert "varlen_attn" in backend.name
        with kernels("fake", "2.13") as backend:    # it imports, but its kernel fails the probe call
            import sys

            def fails(*args, **kwargs):
                raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

            sys.modules["flash_attn"].flash_attn_varlen_func = fails
            assert "varlen_attn" in A.select_backend("cpu").name
        with kernels("fake", None):                 # it runs, but computes something else: the probe compares
            RECORD.fault = Fault(causal=False)
            assert A.select_backend("cpu").kernel is None
    flash_warnings = [str(w.message) for w in said if "flash-attn is installed" in str(w.message)]
    assert [w.split("(")[1].split(":")[0] for w in flash_warnings] == ["ImportError", "RuntimeError", "RuntimeError"]
    assert "disagrees with SDPA" in flash_warnings[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing installed (a CPU machine): no warning at all
        with kernels(None, None) as backend:
            assert backend.kernel is None and backend.name.startswith("sdpa")
        with kernels(None, "no enable_gqa") as backend:  # an older torch: KV heads repeated for it
            assert "varlen_attn" in backend.name
        with kernels(None, "no scale") as backend:       # older still: not usable
            assert backend.kernel is None and "takes no softmax scale" in backend.name
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[attention] backend:")]
    assert len(lines) == 9  # one per selection ...
    with kernels("fake", "2.13"):
        x = torch.randn(1, 4, 9, 8, dtype=torch.bfloat16)
        layout = A.Layout(A.pack_segments(torch.tensor([0, 4, 9], dtype=torch.int32), 9))
        for _ in range(3):
            A.attention(x, x[:, :2], x[:, :2], 0.3, layout)
        assert RECORD.calls == 2 + 3  # the probe's two calls, then the three above
    assert capsys.readouterr().out.count("[attention] backend:") == 1  # ... and none per call


def test_doubles_check_every_precondition():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(10, 4, 8, generator=g, dtype=torch.bfloat16)
    k, v = (torch.randn(10, 2, 8, generator=g, dtype=torch.bfloat16) for _ in range(2))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    good = dict(q=q, k=k, v=v, cu_q=cu, cu_k=cu, max_q=6, max_k=6)

    def flash(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **{"softmax_scale": 0.3, "causal": True, **kw})

    def torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **{"scale": 0.3, "window_size": (-1, 0),
                                                                 "enable_gqa": True, **kw})

    for fake in (flash, torch_varlen):
        assert fake(**good).shape == (10, 4, 8)
        bad_inputs = [dict(q=q.float()), dict(cu_q=cu.long()), dict(max_q=torch.tensor(6)), dict(max_q=7),
                      dict(q=q.transpose(1, 2).contiguous().transpose(1, 2)), dict(cu_k=torch.tensor([0, 5, 10],
                      dtype=torch.int32)), dict(q=q[None]), dict(cu_q=torch.tensor([0, 4, 9], dtype=torch.int32))]
        for bad in bad_inputs:
            with pytest.raises(AssertionError):
                fake(**{**good, **bad})
    for bad_call in (dict(causal=False), dict(softmax_scale=None)):
        with pytest.raises(AssertionError):
            flash(**good, **bad_call)
    for bad_call in (dict(window_size=[-1, 0]), dict(window_size=(-1, -1)), dict(scale=None), dict(enable_gqa=False)):
        with pytest.raises(AssertionError):
            torch_varlen(**good, **bad_call)


# ---------------------------------------------------------------------------------------------
# The backend table, SP 1


def each_sequence_alone(model, row) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, gradients) of the packed row's step, computed one sequence at a time: no packing at all."""
    bounds = row["cu_seqlens"].tolist()
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
    model.activation_checkpointing_enable()
    model.train()
    model.zero_grad()
    sum(model(**{k: row[k][:, s:e] for k in ("input_ids", "labels", "loss_weights")}).loss
        for s, e in pieces).backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    with torch.no_grad():
        logits = torch.cat([model(row["input_ids"][:, s:e], use_cache=False).logits.float() for s, e in pieces], 1)
    model.activation_checkpointing_disable()
    return logits, grads


@pytest.mark.parametrize("model_name", ["llama", "chatglm"])
def test_backend_table_sp1(models, model_name):
    row = packed_row()
    logits_kwargs = {k: row[k] for k in ("input_ids", "cu_seqlens")}
    for dtype, torch_dtype in DTYPES.items():
        model = copy.deepcopy(models[model_name]).to(torch_dtype)
        results, calls = {}, {}
        for backend in BACKENDS:
            results[backend], calls[backend] = through(backend, dtype, lambda m=model: step(m, row, logits_kwargs))
        alone, _ = through("sdpa", dtype, lambda m=model: each_sequence_alone(m, row))
        for backend, result in results.items():
            against = "each sequence alone" if backend == "sdpa" else "sdpa"
            cell = compare(result, alone if backend == "sdpa" else results["sdpa"])
            print(figure(1, model_name, dtype, backend, cell, against))
            assert within(cell, dtype), (backend, dtype, cell)
            # the kernel ran in every layer: the forward, its recomputation in backward, the logits forward
            assert calls[backend] == (0 if backend == "sdpa" else 3 * model.config.num_hidden_layers)


def test_control_a_wrong_kernel_fails_the_comparison(models):
    """Each fault in each double, in the dtype the kernels run (bf16) and at the fp32 precision of the call code."""
    row = packed_row()
    logits_kwargs = {k: row[k] for k in ("input_ids", "cu_seqlens")}
    faults = {"bf16": [Fault(causal=False), Fault(cross_sequences=True)], "fp32": [Fault(scale_factor=1.01)]}
    for dtype, torch_dtype in DTYPES.items():
        model = copy.deepcopy(models["llama"]).to(torch_dtype)
        sdpa, _ = through("sdpa", dtype, lambda m=model: step(m, row, logits_kwargs))
        for backend in ("flash-attn (fake)", "varlen_attn (fake)"):
            with kernels(*BACKENDS[backend], allow_fp32=dtype == "fp32"):
                for fault in faults[dtype]:
                    RECORD.fault = fault
                    cell = compare(step(model, row, logits_kwargs), sdpa)
                    print(f"[figure] backend table control: {backend}, {dtype}, {fault}: max|dlogits| "
                          f"{cell['logits']:.1e} rel|dgrad| {cell['grad']:.1e} (tolerances {LOGITS_TOL[dtype]}, "
                          f"{GRAD_TOL[dtype]})")
                    assert not within(cell, dtype), (backend, fault, cell)


# ---------------------------------------------------------------------------------------------
# Host syncs


@pytest.mark.parametrize("model_name", ["llama", "chatglm"])
def test_host_syncs_per_forward_do_not_grow_with_layers(models, model_name):
    """Packed forward: the single read of cu_seqlens; padded rows: whether any token is padding, once;
    a decoding step: nothing. The same with 2 and 4 layers, so 0 per layer."""
    row = packed_row()
    x = row["input_ids"][:, :20].expand(2, -1)
    for layers in (2, 4):
        model = copy.deepcopy(models[model_name]).eval()
        if layers == 4:  # two more (random) layers: the counts must not move
            blocks = model.model.layers if model_name == "llama" else model.transformer.encoder.layers
            blocks.extend(copy.deepcopy(list(blocks)))
            for i, block in enumerate(blocks):
                (block.self_attn if model_name == "llama" else block.self_attention).layer_idx = i
            model.config.num_hidden_layers = 4
        backbone = model.model if model_name == "llama" else model.transformer
        mask = torch.ones_like(x)
        mask[1, 15:] = 0
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            with count_host_syncs() as packed:
                backbone(row["input_ids"], cu_seqlens=row["cu_seqlens"])
            with count_host_syncs() as padded:
                backbone(x, attention_mask=mask)
            model(x, attention_mask=mask, past_key_values=cache, use_cache=True)  # prefill
            with count_host_syncs() as decode:
                model(x[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], 1), past_key_values=cache,
                      use_cache=True, position_ids=torch.tensor([[20], [15]]))
        print(f"[figure] host syncs per forward, {model_name} with {layers} layers: packed {dict(packed)}, "
              f"padded rows {dict(padded)}, decoding step {dict(decode)}")
        assert dict(packed) == {"tolist": 1} and dict(padded) == {"aten._local_scalar_dense": 1} and not decode
