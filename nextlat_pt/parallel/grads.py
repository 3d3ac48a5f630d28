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


def _group_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm of one group's gradients over the model-parallel group (float32 scalar)."""
    device = params[0].device if params else torch.device("cpu")
    grads = [p.grad.detach() for p in params if p.grad is not None and _counts_on_this_rank(p)]
    if grads:
        # per-parameter norms in float64, summed, then float32: DeepSpeed's arithmetic
        norms = [torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads]
        squares = torch.stack(norms).pow(2).sum().float()
    else:
        squares = torch.zeros((), dtype=torch.float32, device=device)
    if parallel_state.get_model_parallel_group().size() > 1:
        dist.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return squares.pow(0.5)


def _global_norm_tensor(groups: list[list[torch.nn.Parameter]]) -> torch.Tensor:
    """The global norm summed the way DeepSpeed's ZeRO optimizer sums it (per optimizer
    parameter group, then the groups' norms), so that both engines agree to the bit."""
    return torch.linalg.vector_norm(torch.stack([_group_norm(g) for g in groups]))


def global_grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients of the model, as if it were on one device."""
    return _global_norm_tensor([params]).item()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float,
                   groups: list[list[torch.nn.Parameter]] | None = None) -> float:
    """Scale gradients so their global norm is at most max_norm; returns the norm before.

    DeepSpeed's arithmetic exactly, so that a one-rank run without DeepSpeed and a ZeRO run
    clip alike: factor = max((norm + 1e-6) / max_norm, 1) in float32, grads × (1 / factor).
    `groups` (the optimizer's parameter groups) orders the sum as DeepSpeed does.
    """
    norm = _global_norm_tensor(groups or [params])
    if max_norm > 0:
        factor = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / factor)
    return norm.item()


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
