"""The language-modelling loss without ever holding all logits in fp32 (paper Eq. 2-4 per token).

At 64k tokens the fp32 logits alone are 8.4 GB for Llama-2 (vocab 32,000) and 17 GB for ChatGLM3
(65,024); the usual `lm_head` -> `cross_entropy` keeps them, their log-softmax and their gradient
alive together. Here the output layer and the cross-entropy are one autograd Function that walks
the target tokens chunk by chunk through ONE reused (chunk, V) fp32 buffer and, in the same pass,
computes the gradients w.r.t. the hidden states and the output weight (they only need the softmax
of the chunk, which is in the buffer right then). Backward only scales them by the incoming gradient.
Nothing is recomputed and no (T, V) tensor exists.

What the loss is (labels UNSHIFTED, the model shifts; IGNORE_INDEX = -100 is not a target):
    with loss_weights:  sum_t w_t * CE_t   over target tokens t, NO normalisation
                        (w_t is the weight stored at the target's own position; the training code
                        puts w_t = W / (M * N_i) there for Eq. 2 and 4; docs/training.md)
    without:            mean of CE_t over the target tokens of this call (0 when there are none)
With `cu_seqlens` the last token of a packed sequence never predicts the first token of the next.
`softcap` = c (Gemma-2's final_logit_softcapping): the logits are c * tanh(z / c) before the cross-entropy, and the
gradient carries the factor 1 - tanh^2 (one more (chunk, V) fp32 buffer while it runs).

Precision. The weights must arrive in fp32 (fp64 is accepted and used in fp32): a bf16 or fp16 weight has
already lost the bits that make Eq. 2-4 exact, so it is refused with an error, never silently used (the HF
Trainer casts floating batch tensors to the DeepSpeed dtype; train.py's LongAlignTrainer keeps the weights
out of that cast). With fp16 weights of the model (DeepSpeed --fp16), dL/dh and dL/dW stay in fp32 until
backward, where the incoming gradient (the loss scale) multiplies them before the cast to fp16, as autograd
through fp32 logits would order it: a per-token weight like 8/(96*20000) times a softmax probability is far
below fp16's smallest number, and cast first it would be 0.

Pre-shifted targets (`shift_labels`, `shift_loss_weights`: already aligned with the predicting position,
as `shift_targets` returns them) skip the shift. Sequence parallelism needs this: a rank holds a slice
of the row, and the target of its last position is the first token of the NEXT rank's slice, so the
shift is done on the full row before it is cut (longalign/sequence_parallel.py).
"""

import torch
from torch import nn

from longalign import IGNORE_INDEX

DEFAULT_CHUNK_SIZE = 1024  # rows of logits per chunk: 1024 x 32,000 fp32 = 131 MB, reused


# ---------------------------------------------------------------------------------------------
# Targets: shift, cut at sequence boundaries, keep only the tokens that are targets

def fp32_weights(weights: torch.Tensor | None) -> torch.Tensor | None:
    """The loss weights as fp32; a TypeError for bf16/fp16, whose rounding already changed Eq. 2-4."""
    if weights is None:
        return None
    if weights.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"loss weights arrived as {weights.dtype}, not float32: something cast them on the way and "
                        f"rounded every sequence's weight of Eq. 2-4 (the HF Trainer casts floating batch tensors "
                        f"to the DeepSpeed dtype, which train.py's LongAlignTrainer prevents; DeepSpeed's "
                        '"fp16": {"auto_cast": true} casts them again: leave it off). Pass them as float32.')
    return weights.float()


def shift_targets(labels: torch.Tensor, loss_weights: torch.Tensor | None = None,
                  cu_seqlens: torch.Tensor | None = None):
    """(B, T) unshifted labels/weights -> (B, T) targets/weights aligned with the predicting position.

    Position t predicts token t+1, so targets[:, t] = labels[:, t+1]; the last position predicts
    nothing. In a pack (cu_seqlens), the position before each sequence start predicts nothing either.
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if cu_seqlens is not None:
        starts = cu_seqlens.reshape(-1)[1:-1].long()                 # inner sequence starts
        targets[:, starts - 1] = IGNORE_INDEX
    weights, loss_weights = None, fp32_weights(loss_weights)
    if loss_weights is not None:
        weights = torch.zeros_like(loss_weights)
        weights[:, :-1] = loss_weights[:, 1:]
    return targets, weights


# ---------------------------------------------------------------------------------------------
# The fused output layer + cross-entropy

class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_n w_n * CE(h_n @ W^T, y_n) for N target rows; gradients computed during the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, chunk_size: int, need_grad: bool, softcap=None):
        # hidden (N, H), weight (V, H), targets (N,) in [0, V), token_weights (N,) fp32
        n, v = hidden.shape[0], weight.shape[0]
        buf = torch.empty(min(chunk_size, n), v, dtype=torch.float32, device=hidden.device)  # reused
        slope_buf = torch.empty_like(buf) if softcap and need_grad else None  # d(softcapped)/dz, reused
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # fp16 has bf16's precision but not its range: the gradients computed here, before the loss scale
        # exists, would underflow to 0 in fp16. Keep them in fp32 (dh computed by an fp32 matmul against an
        # fp32 copy of W, V x H x 4 bytes while the forward runs) and cast in backward, after the scale.
        fp32_grads = hidden.dtype == torch.float16 or weight.dtype == torch.float16
        ctx.dtypes = hidden.dtype, weight.dtype
        weight_fp32 = weight.float() if need_grad and fp32_grads else None
        grad_hidden = None
        if need_grad:
            grad_hidden = torch.empty(hidden.shape, dtype=torch.float32 if fp32_grads else hidden.dtype,
                                      device=hidden.device)
        # fp32 accumulator for dW: summing many chunks in bf16 would lose the small contributions
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for s in range(0, n, chunk_size):
            h, y, w = hidden[s:s + chunk_size], targets[s:s + chunk_size], token_weights[s:s + chunk_size]
            logits = buf[: h.shape[0]]                                      # (c, V) fp32 view
            if hidden.dtype == torch.float32:
                torch.mm(h, weight.t(), out=logits)
            else:
                logits.copy_(h @ weight.t())                                 # bf16 matmul, fp32 softmax
            if softcap:  # z -> c * tanh(z / c), keeping 1 - tanh^2 for the gradient
                logits.div_(softcap).tanh_()
                if need_grad:
                    slope = torch.mul(logits, logits, out=slope_buf[: h.shape[0]]).neg_().add_(1)  # (c, V)
                logits.mul_(softcap)
            # CE = logsumexp(z) - z_y, with the softmax left in the buffer: each pass over the (c, V)
            # buffer costs as much as a small matmul, so there are as few as possible and no temporaries
            target_logit = logits.gather(1, y[:, None]).squeeze(1)          # (c,)
            z_max = logits.amax(dim=1)                                       # (c,)
            logits.sub_(z_max[:, None]).exp_()                               # exp(z - max), in place
            z_sum = logits.sum(dim=1)                                        # (c,)
            loss += (w * (z_max + z_sum.log() - target_logit)).sum()
            if not need_grad:
                continue
            # d(w * CE)/dz = w * (softmax - onehot(y)), written over the buffer in place
            logits.mul_((w / z_sum)[:, None])
            logits.scatter_add_(1, y[:, None], -w[:, None])
            if softcap:
                logits.mul_(slope)                                           # back through the tanh
            if fp32_grads:
                torch.mm(logits, weight_fp32, out=grad_hidden[s:s + chunk_size])  # (c, H), fp32
            else:
                g = logits if hidden.dtype == torch.float32 else logits.to(hidden.dtype)
                torch.mm(g, weight, out=grad_hidden[s:s + chunk_size])      # (c, H)
            grad_weight.addmm_(logits.t(), h.float())                      # (V, H), fp32
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight if fp32_grads else grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if not bool(grad_loss == 1):  # the usual case is exactly 1: skip two full passes
            grad_hidden, grad_weight = grad_hidden * grad_loss, grad_weight * grad_loss
        # fp16: scaled first (above), cast now; otherwise the dtypes already match and .to() is a no-op
        hidden_dtype, weight_dtype = ctx.dtypes
        return grad_hidden.to(hidden_dtype), grad_weight.to(weight_dtype), None, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               token_weights: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                               softcap: float | None = None) -> torch.Tensor:
    """sum_n token_weights[n] * CE(hidden[n] @ weight^T, targets[n]); hidden (N, H), targets (N,)."""
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, token_weights, chunk_size, need_grad, softcap)


def causal_lm_loss(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   loss_weights: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, softcap: float | None = None) -> torch.Tensor:
    """The model's loss from final hidden states (B, T, H) and the output weight (V, H); see the top."""
    targets, weights = shift_targets(labels, loss_weights, cu_seqlens)  # (B, T) each
    return shifted_lm_loss(hidden_states, weight, targets, weights, chunk_size, softcap)


def shifted_lm_loss(hidden_states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    weights: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    softcap: float | None = None) -> torch.Tensor:
    """The loss when targets (B, T) and weights are already aligned with the predicting position."""
    rows = (targets != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)   # (N,) target positions
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])[rows]   # (N, H) only rows that count
    targets = targets.reshape(-1)[rows]
    if weights is None:
        # plain token mean: every target weighs 1/N (with N = 0 the sum is empty and the loss is 0)
        weights = torch.full((rows.numel(),), 1.0 / max(rows.numel(), 1), device=hidden.device)
    else:
        weights = fp32_weights(weights).reshape(-1)[rows]
    return fused_linear_cross_entropy(hidden, weight, targets, weights, chunk_size, softcap)


class LMHead(nn.Linear):
    """The output layer (`lm_head` / `output_layer`, bias-free), which also computes the loss.

    forward(h) -> (None, logits (B, T, V)) as nn.Linear would compute them (only the last
    `logits_to_keep` positions when that is > 0, as generate() asks; no softcap there); forward(h, labels, ...) or
    forward(h, shift_labels=...) -> (loss, None): with labels no logits are materialised. The loss lives in this module's forward
    (not the model's) because DeepSpeed ZeRO-3 gathers a module's partitioned weight only while
    that module runs.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, hidden_states, labels=None, loss_weights=None, cu_seqlens=None, logits_to_keep: int = 0,
                shift_labels=None, shift_loss_weights=None, softcap=None):
        if labels is not None and shift_labels is not None:
            raise ValueError("pass labels (unshifted) or shift_labels (already shifted), not both.")
        if labels is not None:
            return causal_lm_loss(hidden_states, self.weight, labels, loss_weights, cu_seqlens, softcap=softcap), None
        if shift_labels is not None:
            return shifted_lm_loss(hidden_states, self.weight, shift_labels, shift_loss_weights, softcap=softcap), None
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        return None, super().forward(hidden_states)
