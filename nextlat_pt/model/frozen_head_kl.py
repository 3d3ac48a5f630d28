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

import functools

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


def _student_local_lse(student_logits: Tensor, temperature: float) -> Tensor:
    """log Σ exp(z/τ) over this rank's vocabulary slice, per token, fp32: [c, V/tp] -> [c]."""
    z = student_logits.float()
    if temperature != 1.0:
        z = z / temperature
    return torch.logsumexp(z, -1)


def _chunk_terms(student_logits: Tensor, teacher_logits: Tensor, teacher_lse: Tensor,
                 student_lse: Tensor, temperature: float,
                 grad_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One chunk's V-wide work, given both normalisers (all ranks'): per token this rank's
    share of Σ_v p (log p − log q), and q − p in `grad_dtype` (the head's, for the
    gradient's matmul). log p = z_teacher/τ − lse_teacher, log q = z/τ − lse_student.

    A pure function of tensors, so `train.compile` can fuse its passes into a couple of
    kernels that read the two [c, V/tp] logits once and write q − p once.
    """
    z = student_logits.float()
    teacher = teacher_logits.float()
    if temperature != 1.0:
        z = z / temperature
        teacher = teacher / temperature
    log_p = teacher - teacher_lse.unsqueeze(-1)
    p = log_p.exp()
    log_q = z - student_lse.unsqueeze(-1)
    kl = torch.linalg.vecdot(p, log_p - log_q)
    return kl, (log_q.exp() - p).to(grad_dtype)


@functools.cache
def _compiled_chunk_functions():
    """The two per-chunk functions compiled, once per process."""
    return (torch.compile(_student_local_lse, dynamic=None),
            torch.compile(_chunk_terms, dynamic=None))


def _chunk_functions(fused: bool):
    """The two per-chunk functions, eager or compiled (`fused`)."""
    return _compiled_chunk_functions() if fused else (_student_local_lse, _chunk_terms)


class _ChunkedFrozenHeadKL(torch.autograd.Function):
    """Σ_n w_n KL(p_n ‖ softmax(W ĥ_n / τ)); gradient to ĥ only, computed in forward.

    Per chunk the V-wide work is a handful of passes (this is what costs beyond the two
    matmuls): the student's log Σ exp, then p = exp(log p), Σ p (log p − log q) and q − p
    (`_chunk_terms`, fused under `train.compile`); the weights w/τ scale the [chunk, D]
    gradient, not the [chunk, V] one.
    """

    @staticmethod
    def forward(ctx, latent: Tensor, head_weight: Tensor, teacher_logits: Tensor,
                teacher_lse: Tensor, weights: Tensor, temperature: float,
                chunk_tokens: int, fused: bool) -> Tensor:
        group = _tp_group()
        local_lse, chunk_terms = _chunk_functions(fused)
        want_grad = ctx.needs_input_grad[0]
        grad_latent = torch.zeros_like(latent) if want_grad else None
        total = torch.zeros((), dtype=torch.float32, device=latent.device)
        for start in range(0, latent.shape[0], chunk_tokens):
            end = start + chunk_tokens
            w = weights[start:end].float()
            if not bool((w != 0).any()):
                continue  # nothing valid here: no contribution, zero gradient
            # student: z = W ĥ (/ τ) and its normaliser over all ranks' vocabulary slices
            z = latent[start:end] @ head_weight.t()
            student_lse = _global_logsumexp(local_lse(z, temperature), group)
            # Σ_v p (log p − log q) over this rank's slice, with both normalisers global:
            # under TP the ranks' sums add up to the KL (all-reduced below).
            kl, q_minus_p = chunk_terms(z, teacher_logits[start:end], teacher_lse[start:end],
                                        student_lse, temperature, head_weight.dtype)
            total += (kl * w).sum()
            if want_grad:
                grad = (q_minus_p @ head_weight).float()
                grad_latent[start:end] = (grad * (w / temperature).unsqueeze(-1)).to(
                    latent.dtype)
        _all_reduce(total, group)
        ctx.save_for_backward(grad_latent if want_grad else None)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        (grad_latent,) = ctx.saved_tensors
        return (grad_latent * grad_total.to(grad_latent.dtype), None, None, None, None, None,
                None, None)


def frozen_head_kl(latent: Tensor, head_weight: Tensor, teacher_logits: Tensor,
                   teacher_lse: Tensor, weights: Tensor, temperature: float = 1.0,
                   chunk_tokens: int = DEFAULT_CHUNK_TOKENS, fused: bool = False) -> Tensor:
    """Weighted KL(teacher ‖ frozen-head decoding of ĥ), summed over tokens: a scalar.

    Args:
        latent: ĥ, [..., D] (differentiable; gradients reach ψ and the trunk through it).
        head_weight: the local LM-head weight [V/tp, D]; never receives a gradient.
        teacher_logits: [..., V/tp], the true logits at the same positions (a constant).
        teacher_lse: [...] from `teacher_log_normalizer` over the same logits.
        weights: [...] per-token weights (mask / Σ mask for a masked mean).
        temperature: τ of both distributions; the result is not rescaled by τ².
        chunk_tokens: tokens decoded at once; bounds the memory of the term.
        fused: run each chunk's V-wide passes compiled (`train.compile`), not eagerly.
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
        fused,
    )
