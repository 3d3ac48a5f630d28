"""Gradient norm and clipping over parameters sharded by tensor (and pipeline) parallelism.

A parameter replicated on every TP rank (norm weights) must count once in the global norm;
a TP-sharded one (megatron marks it `tensor_model_parallel`) counts on every rank. The squared
sums are then added over the model-parallel group (TP × PP).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def _counts_on_this_rank(param: torch.nn.Parameter) -> bool:
    if getattr(param, "tensor_model_parallel", False):
        return True
    return parallel_state.get_tensor_model_parallel_rank() == 0


def global_grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients of the model, as if it were on one device."""
    device = params[0].device if params else torch.device("cpu")
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is not None and _counts_on_this_rank(p):
            squares += p.grad.detach().float().pow(2).sum()
    if parallel_state.get_model_parallel_group().size() > 1:
        dist.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return squares.sqrt().item()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale gradients so their global norm is at most max_norm; returns the norm before."""
    norm = global_grad_norm(params)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm


def register_sequence_parallel_grad_hooks(model: torch.nn.Module) -> int:
    """Under sequence parallelism each TP rank sees a slice of the sequence, so parameters
    applied per position outside TP-sharded layers (the norms, tagged `sequence_parallel`)
    get partial gradients. A hook sums each micro-batch's contribution over the TP group as
    it is produced, before any optimizer wrapper reads it. Returns the number of hooks."""
    group = parallel_state.get_tensor_model_parallel_group()
    count = 0
    for param in model.parameters():
        if getattr(param, "sequence_parallel", False) and param.requires_grad:

            def hook(grad: torch.Tensor) -> torch.Tensor:
                grad = grad.clone()
                dist.all_reduce(grad, group=group)
                return grad

            param.register_hook(hook)
            count += 1
    return count
