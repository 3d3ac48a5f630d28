"""Reassemble full tensors from tensor-parallel shards (tests, export, diagnostics).

megatron marks a sharded parameter with `tensor_model_parallel`, `partition_dim` and
`partition_stride`. With stride s > 1 (SwiGLU's fc1 holds [gate_r; up_r] on rank r) the full
weight is the chunks in order k = 0..s·tp-1, where chunk k is piece k // tp of rank k % tp.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def gather_tensor_parallel(tensor: torch.Tensor, partition_dim: int, stride: int = 1,
                           group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather the TP shards of `tensor` into the full (TP=1) tensor, on every rank."""
    group = group or parallel_state.get_tensor_model_parallel_group()
    world = dist.get_world_size(group)
    if world == 1:
        return tensor.detach().clone()
    shards = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(shards, tensor.detach().contiguous(), group=group)
    pieces = [shard.chunk(stride, dim=partition_dim) for shard in shards]
    chunks = [pieces[k % world][k // world] for k in range(stride * world)]
    return torch.cat(chunks, dim=partition_dim)


def full_parameter(param: torch.nn.Parameter, use_grad: bool = False) -> torch.Tensor:
    """The whole parameter (or its gradient) as a TP=1 model would hold it."""
    value = param.grad if use_grad else param.data
    if not getattr(param, "tensor_model_parallel", False):
        return value.detach().clone()
    return gather_tensor_parallel(value, param.partition_dim, getattr(param, "partition_stride", 1))
