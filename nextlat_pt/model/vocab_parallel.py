"""Next-token cross entropy over logits split by vocabulary across TP ranks, in token chunks.

Under TP each rank holds logits for V/tp vocabulary entries. Nothing gathers the full
vocabulary: the softmax normaliser of each token comes from an all-reduced max and an
all-reduced sum of exponentials (as in megatron's kernel; the KL does the same in
`frozen_head_kl.py`).

Why not megatron's `vocab_parallel_cross_entropy`: it takes fp32 logits, so a bf16 model
first made an fp32 copy of the whole [tokens, V] tensor, then ran about nine passes over it
(max, subtract, exp, sum, divide forward; index, subtract, scale and the cast back to bf16
backward). Here the loss is one autograd Function over token chunks: per chunk the fp32
work lives in a [chunk, V/tp] buffer, and the gradient (softmax − one-hot, times the token's
weight) is computed in forward and written once, in the logits' dtype (over the logits
themselves where nothing reads them afterwards: the next-token objective); backward only
scales it by the incoming scalar. Nothing [tokens, V]-sized is kept but that gradient.

The per-token log-normalisers come out as a by-product: at τ = 1 they are the NextLat
teacher's (`nextlat_loss` reuses them instead of another pass over the logits).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import Tensor

DEFAULT_CE_CHUNK_TOKENS = 1024


def _tp_group() -> dist.ProcessGroup | None:
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None
    return parallel_state.get_tensor_model_parallel_group()


def _vocab_start(local_vocab: int) -> int:
    return parallel_state.get_tensor_model_parallel_rank() * local_vocab


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Σ_n w_n · CE_n over vocab-parallel logits [N, V/tp]; returns (the sum, lse [N] fp32).

    The gradient to the logits is written in forward (w_n · (softmax_n − onehot_n)); the
    log-normalisers are a constant (no gradient flows through them)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, weights: Tensor,
                chunk_tokens: int, in_place: bool) -> tuple[Tensor, Tensor]:
        group = _tp_group()
        tokens, local_vocab = logits.shape
        start = _vocab_start(local_vocab)
        want_grad = ctx.needs_input_grad[0]
        grad = None
        if want_grad:  # in place: each chunk is read (copied to fp32) before it is written
            grad = logits if in_place else torch.empty_like(logits)
        lse = torch.empty(tokens, dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for first in range(0, tokens, chunk_tokens):
            last = min(first + chunk_tokens, tokens)
            z = logits[first:last].to(torch.float32, copy=True)  # worked on in place below
            local_label = labels[first:last] - start
            inside = (local_label >= 0) & (local_label < local_vocab)
            index = local_label.clamp(0, local_vocab - 1).unsqueeze(-1)
            target = z.gather(-1, index).squeeze(-1).masked_fill(~inside, 0.0)
            top = z.amax(-1)
            if group is not None:
                dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
                dist.all_reduce(target, group=group)
            z.sub_(top.unsqueeze(-1))
            p = z.exp_()  # exp(z − max), in z's memory
            sums = p.sum(-1)
            if group is not None:
                dist.all_reduce(sums, group=group)
            chunk_lse = top + sums.log()
            lse[first:last] = chunk_lse
            w = weights[first:last].float()
            total += ((chunk_lse - target) * w).sum()
            if want_grad:
                p.mul_((w / sums).unsqueeze(-1))  # w · softmax
                p.scatter_add_(-1, index, torch.where(inside, -w, 0.0).unsqueeze(-1))
                grad[first:last] = p
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(lse)
        return total, lse

    @staticmethod
    def backward(ctx, grad_total: Tensor, grad_lse: Tensor | None):
        (grad,) = ctx.saved_tensors
        # In place: the gradient buffer is this call's own and backward runs once per step
        # (megatron's kernel scales its saved softmax in place too).
        return grad.mul_(grad_total.to(grad.dtype)), None, None, None, None


def vocab_parallel_cross_entropy_mean(
        logits: Tensor, labels: Tensor, loss_mask: Tensor,
        chunk_tokens: int = DEFAULT_CE_CHUNK_TOKENS,
        in_place: bool = False) -> tuple[Tensor, Tensor]:
    """Masked-mean CE over vocab-parallel logits [..., V/tp] and the per-token log Σ exp.

    Returns (the mean over positions where loss_mask is 1, a scalar; 0 when none is;
    lse [...] fp32, detached). `in_place`: the gradient is written over the logits (no
    second [tokens, V] buffer; for callers that read nothing from the logits afterwards,
    as megatron's kernel did); otherwise they are left intact.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    mask = loss_mask.float()
    weights = mask / mask.sum().clamp(min=1.0)
    vocab = logits.shape[-1]
    total, lse = _ChunkedCrossEntropy.apply(
        logits.reshape(-1, vocab), labels.reshape(-1), weights.reshape(-1), chunk_tokens,
        in_place)
    return total, lse.reshape(logits.shape[:-1])
