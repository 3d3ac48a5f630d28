"""Token-level losses over logits that are split by vocabulary across tensor-parallel ranks.

Under TP each rank holds logits for V/tp vocabulary entries. Nothing here gathers the full
vocabulary: the softmax normaliser is built from an all-reduced max and an all-reduced sum,
as megatron's vocab-parallel cross entropy does. With TP=1 the all-reduces are skipped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch import Tensor


def _tp_group() -> dist.ProcessGroup | None:
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None
    return parallel_state.get_tensor_model_parallel_group()


def _log_softmax(local_logits: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """log softmax over the full (distributed) vocabulary, returned for the local slice.

    No autograd: only used on detached inputs or inside `_VocabParallelKL`.
    """
    logits_max = local_logits.max(dim=-1, keepdim=True).values
    if group is not None:
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
    shifted = local_logits - logits_max
    sum_exp = shifted.exp().sum(dim=-1, keepdim=True)
    if group is not None:
        dist.all_reduce(sum_exp, group=group)
    return shifted - sum_exp.log()


class _VocabParallelKL(torch.autograd.Function):
    """KL(p_teacher || q_student) per token; teacher given as log-probs, student as logits.

    The teacher is a constant (no gradient). d KL / d student_logits = (q - p) / tau.
    Only the student's log-probs are saved; the teacher's are a view of a tensor the caller
    keeps anyway, so a rollout step costs one logits-sized buffer.
    """

    @staticmethod
    def forward(ctx, student_logits: Tensor, teacher_log_probs: Tensor,
                temperature: float) -> Tensor:
        group = _tp_group()
        with torch.no_grad():
            log_q = _log_softmax(student_logits.float() / temperature, group)
            kl = (teacher_log_probs.exp() * (teacher_log_probs - log_q)).sum(dim=-1)
            if group is not None:
                dist.all_reduce(kl, group=group)
        ctx.save_for_backward(log_q, teacher_log_probs)
        ctx.temperature = temperature
        ctx.student_dtype = student_logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl: Tensor):
        log_q, log_p = ctx.saved_tensors
        grad = (log_q.exp() - log_p.exp()) * (grad_kl.unsqueeze(-1) / ctx.temperature)
        return grad.to(ctx.student_dtype), None, None


def vocab_parallel_log_softmax(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits/τ) over the full vocabulary, for the local slice; no gradient."""
    with torch.no_grad():
        return _log_softmax(logits.detach().float() / temperature, _tp_group())


def vocab_parallel_kl(student_logits: Tensor, teacher_log_probs: Tensor,
                      temperature: float = 1.0) -> Tensor:
    """Forward KL(p || softmax(student/τ)), summed over the vocabulary.

    Args:
        student_logits: [..., V/tp], differentiable.
        teacher_log_probs: [..., V/tp] from `vocab_parallel_log_softmax` (a constant).
        temperature: τ; the result is not rescaled by τ².
    Returns:
        [...] per-token KL in nats (identical on every TP rank).
    """
    return _VocabParallelKL.apply(student_logits, teacher_log_probs.detach(), temperature)


def vocab_parallel_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token cross entropy with megatron's vocab-parallel kernel. logits [..., V/tp].

    Megatron's kernel overwrites its input in place to save memory (fp32 logits are passed
    through `.float()` unchanged): read anything else you need from the logits first.
    """
    return vocab_parallel_cross_entropy(logits.float(), labels)
