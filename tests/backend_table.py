"""The backend table: each attention backend against SDPA, for tests/test_attention_backends.py (SP 1) and
tests/test_sequence_parallel.py (SP 2, two processes).

One cell = one training step of a tiny model (packed row, weighted loss, activation checkpointing) and one
logits forward, through one backend; it is compared with the same step through SDPA. The SDPA row itself is
compared with an independent reference: each sequence alone (SP 1) or one process over the full row (SP 2).
Kernels take fp16/bf16 only; the fp32 column lets the fake kernels take fp32 too, which checks the call code
(layouts, cu_seqlens, GQA, scale) at fp32 precision.
"""

import torch
from fake_kernels import RECORD, kernels

BACKENDS = {"flash-attn (fake)": ("fake", None), "varlen_attn (fake)": (None, "2.13"), "sdpa": (None, None)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# tolerances against SDPA: kernels compute the same sums as SDPA, only their order may differ
LOGITS_TOL = {"bf16": 1.6e-2, "fp32": 1e-5}   # times max(1, max |logits|): two bf16 ulps
GRAD_TOL = {"bf16": 1e-2, "fp32": 1e-5}       # relative, ||g - g_sdpa|| / ||g_sdpa||


def step(model, loss_kwargs: dict, logits_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (logits, flat parameter gradients), both fp32: one training step with activation checkpointing
    (as the paper's launchers run) and one logits forward."""
    model.activation_checkpointing_enable()
    model.train()
    model.zero_grad()
    model(**loss_kwargs).loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    with torch.no_grad():
        logits = model(**logits_kwargs, use_cache=False).logits.float()
    model.activation_checkpointing_disable()
    return logits, grads


def through(backend: str, dtype: str, fn):
    """fn() with `backend` selected (the doubles in place on CPU) -> (fn's result, kernel calls)."""
    flash, varlen = BACKENDS[backend]
    with kernels(flash, varlen, allow_fp32=dtype == "fp32"):
        RECORD.calls = 0
        return fn(), RECORD.calls


def compare(a: tuple, b: tuple) -> dict:
    (la, ga), (lb, gb) = a, b
    return {"logits": float((la - lb).abs().max()), "logits_scale": max(1.0, float(lb.abs().max())),
            "grad": float((ga - gb).norm() / gb.norm())}


def within(cell: dict, dtype: str) -> bool:
    return cell["logits"] <= LOGITS_TOL[dtype] * cell["logits_scale"] and cell["grad"] <= GRAD_TOL[dtype]


def figure(sp: int, model: str, dtype: str, backend: str, cell: dict, against: str) -> str:
    return (f"[figure] backend table: SP {sp} | {model} | {dtype} | {backend} | max|dlogits| {cell['logits']:.1e} "
            f"| rel|dgrad| {cell['grad']:.1e} | vs {against}")
