"""The input embedding's copy on the last pipeline stage (megatron's embedding group).

With PP > 1 the input embedding lives on the first stage, yet the last stage needs it too:
as the tied LM head, and as E(x') for ψ. The last stage keeps a copy that starts identical
(layout-independent init) and stays identical because both copies take the summed
gradient, exactly like the one shared weight of a PP = 1 model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def allreduce_embedding_grads(params: list[torch.nn.Parameter]) -> None:
    """PP > 1: sum the gradients of the input embedding (first stage) and its last-stage copy
    (tied LM head or ψ's replica) over megatron's embedding group, so both copies take the
    same update and stay identical, as one shared weight would under PP = 1."""
    if not params:
        return
    group = parallel_state.get_embedding_group()
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, group=group)


def replica_max_abs_diff(params: list[torch.nn.Parameter]) -> float | None:
    """Max |first-stage embedding - last-stage copy| over all TP shards (a diagnostic).

    Every rank must call it (pass this rank's `embedding_group_params()`); every rank gets
    the same answer, or None when the model keeps no copy (or PP = 1).
    """
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return None
    device = params[0].device if params else torch.device("cpu")
    # [has a copy, max diff]: MAX-reduced over the world so every rank learns both.
    result = torch.zeros(2, device=device)
    if params:
        weight = params[0].detach().float()
        original = weight.clone()
        dist.broadcast(original, src=parallel_state.get_pipeline_model_parallel_first_rank(),
                       group=parallel_state.get_embedding_group())
        result[0] = 1.0
        if parallel_state.is_pipeline_last_stage():
            result[1] = (weight - original).abs().max()
    dist.all_reduce(result, op=dist.ReduceOp.MAX)
    return result[1].item() if result[0] > 0 else None
