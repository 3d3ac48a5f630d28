"""The KL term of NextLat, decoded through the frozen LM head in token chunks.

    L_KL = Σ_n w_n · KL( p_n ‖ q_n ),   p_n = softmax(z_n / τ) (teacher, constant),
                                        q_n = softmax(W ĥ_n / τ) (student, W frozen)

with w_n the masked-mean weights (mask_n / Σ mask). Because W is frozen and the teacher is a
constant, the only gradient is dL/dĥ_n = w_n/τ · (q_n − p_n) W, which has the width D, not V.
So the forward pass walks the tokens in chunks: per chunk it computes the student logits,
the KL and that gradient, and then drops the chunk's V-wide tensors. What survives a chunk is
[chunk, D]. The backward pass only scales the stored gradient by the incoming scalar. Memory
of the term is therefore bounded by the chunk size (a few chunk × V/tp buffers), however
long the sequence and whatever the horizon d, and no logits are ever recomputed.

Under tensor parallelism the vocabulary is split: each rank holds W's rows and the teacher
logits for V/tp entries. The softmax normalisers use an all-reduced max and sum per chunk
(like megatron's vocab-parallel CE); each rank's partial gradient (q − p)_local W_local is
summed over the TP ranks by the caller's `copy_to_tensor_model_parallel_region` in backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region
from torch import Tensor

DEFAULT_CHUNK_TOKENS = 1024


def _tp_group() -> dist.ProcessGroup | None:
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None
    return parallel_state.get_tensor_model_parallel_group()


def _all_reduce(tensor: Tensor, group: dist.ProcessGroup | None,
                op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)


def _global_logsumexp(local_lse: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Combine each TP rank's log Σ exp over its vocabulary slice into the full one."""
    if group is None:
        return local_lse
    top = local_lse.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    total = (local_lse - top).exp()
    dist.all_reduce(total, group=group)
    return top + total.log()


def teacher_log_normalizer(logits: Tensor, temperature: float = 1.0,
                           chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Tensor:
    """log Σ_v exp(z_v / τ) over the full (TP-split) vocabulary: [..., V/tp] -> [...] fp32.

    With it, the teacher's log-probabilities of any chunk are z/τ − lse, one subtraction:
    the V-wide teacher distribution is never kept, only this per-token scalar.
    """
    group = _tp_group()
    flat = logits.detach().reshape(-1, logits.shape[-1])
    lse = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk_tokens):
            z = flat[start:start + chunk_tokens].float()
            if temperature != 1.0:
                z = z / temperature
            lse[start:start + chunk_tokens] = _global_logsumexp(torch.logsumexp(z, -1), group)
    return lse.reshape(logits.shape[:-1])


class _ChunkedFrozenHeadKL(torch.autograd.Function):
    """Σ_n w_n KL(p_n ‖ softmax(W ĥ_n / τ)); gradient to ĥ only, computed in forward.

    Per chunk the V-wide work is a handful of passes (this is what costs beyond the two
    matmuls on a CPU): the student's log Σ exp, p = exp(log p), Σ p (log p − z), and
    q − p; the weights w/τ scale the [chunk, D] gradient, not the [chunk, V] one.
    """

    @staticmethod
    def forward(ctx, latent: Tensor, head_weight: Tensor, teacher_logits: Tensor,
                teacher_lse: Tensor, weights: Tensor, temperature: float,
                chunk_tokens: int) -> Tensor:
        group = _tp_group()
        want_grad = ctx.needs_input_grad[0]
        grad_latent = torch.zeros_like(latent) if want_grad else None
        total = torch.zeros((), dtype=torch.float32, device=latent.device)
        for start in range(0, latent.shape[0], chunk_tokens):
            end = start + chunk_tokens
            w = weights[start:end].float()
            if not bool((w != 0).any()):
                continue  # nothing valid here: no contribution, zero gradient
            # student: z = W ĥ / τ and its normaliser over all ranks' vocabulary slices
            z = (latent[start:end] @ head_weight.t()).float()
            if temperature != 1.0:
                z.div_(temperature)
            student_lse = _global_logsumexp(torch.logsumexp(z, -1), group).unsqueeze(-1)
            # teacher: log p = z_teacher / τ − lse (a new tensor: the logits stay intact)
            teacher = teacher_logits[start:end].float()
            if temperature != 1.0:
                teacher = teacher / temperature
            log_p = torch.sub(teacher, teacher_lse[start:end].unsqueeze(-1))
            p = log_p.exp()
            # KL = Σ_v p (log p − z) + log Σ exp z · Σ_v p. Σ_v p is 1 over the whole
            # vocabulary; under TP each rank adds its share and the ranks' sum is exact.
            kl = torch.linalg.vecdot(p, log_p.sub_(z))
            share = p.sum(-1) if group is not None else 1.0
            kl = kl + student_lse.squeeze(-1) * share
            total += (kl * w).sum()
            if want_grad:
                q_minus_p = z.sub_(student_lse).exp_().sub_(p)  # q − p, in z's memory
                grad = (q_minus_p.to(head_weight.dtype) @ head_weight).float()
                grad_latent[start:end] = (grad * (w / temperature).unsqueeze(-1)).to(
                    latent.dtype)
        _all_reduce(total, group)
        ctx.save_for_backward(grad_latent if want_grad else None)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        (grad_latent,) = ctx.saved_tensors
        return grad_latent * grad_total.to(grad_latent.dtype), None, None, None, None, None, None


def frozen_head_kl(latent: Tensor, head_weight: Tensor, teacher_logits: Tensor,
                   teacher_lse: Tensor, weights: Tensor, temperature: float = 1.0,
                   chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Tensor:
    """Weighted KL(teacher ‖ frozen-head decoding of ĥ), summed over tokens: a scalar.

    Args:
        latent: ĥ, [..., D] (differentiable; gradients reach ψ and the trunk through it).
        head_weight: the local LM-head weight [V/tp, D]; never receives a gradient.
        teacher_logits: [..., V/tp], the true logits at the same positions (a constant).
        teacher_lse: [...] from `teacher_log_normalizer` over the same logits.
        weights: [...] per-token weights (mask / Σ mask for a masked mean).
        temperature: τ of both distributions; the result is not rescaled by τ².
        chunk_tokens: tokens decoded at once; bounds the memory of the term.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    width = latent.shape[-1]
    vocab = teacher_logits.shape[-1]
    return _ChunkedFrozenHeadKL.apply(
        copy_to_tensor_model_parallel_region(latent).reshape(-1, width),
        head_weight.detach(),
        teacher_logits.detach().reshape(-1, vocab),
        teacher_lse.detach().reshape(-1),
        weights.detach().reshape(-1),
        temperature,
        chunk_tokens,
    )
