"""megatron's tensor-parallel linear layers with a matmul torch.compile can trace.

megatron's `ColumnParallelLinear` / `RowParallelLinear` run their matmul through a custom
autograd Function (`LinearWithGradAccumulationAndAsyncCommunication`) built for features we
do not use (fused weight-gradient accumulation into `main_grad`, overlapping the gradient
all-reduce with the weight-gradient GEMM, deferred embedding wgrads); on the way it warns
about a missing process group, which stops dynamo: a decoder layer compiled with them falls
into eight graphs. The classes below change only `_forward_impl`, megatron's own switch
between that Function and the frozen-weight path: the parameters (names, shapes, TP
attributes, init), the checkpoint entries and the TP communication are megatron's, so
checkpoints and the HF export are unchanged.

`_forward_impl` computes what megatron's Function computes, with differentiable pieces:
- the input gradient all-reduced over TP (`allreduce_dgrad`, column-parallel without SP):
  megatron's copy-to-TP-region mapping (identity forward, all-reduce backward);
- sequence parallelism: the input all-gathered along the sequence (reduce-scattered
  backward), megatron's gather-from-SP-region mapping;
- then `F.linear`, whose backward is the same two GEMMs as megatron's (grad_input =
  grad·W, grad_W = gradᵀ·x over the flattened tokens), so eager results are bit-identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)
from torch import Tensor


def _linear(input: Tensor, weight: Tensor, bias: Tensor | None, *,
            allreduce_dgrad: bool, sequence_parallel: bool,
            tp_group: torch.distributed.ProcessGroup | None, **unused) -> Tensor:
    """megatron's `_forward_impl` contract: y = x Wᵀ + b with TP's input communication.

    `unused`: megatron's options we do not support (gradient-accumulation fusion, deferred
    wgrads), checked off by `_check_options`.
    """
    _check_options(**unused)
    if sequence_parallel:
        input = gather_from_sequence_parallel_region(input, tensor_parallel_output_grad=True,
                                                     group=tp_group)
    elif allreduce_dgrad:
        input = copy_to_tensor_model_parallel_region(input, group=tp_group)
    return F.linear(input, weight, bias)


def _check_options(gradient_accumulation_fusion: bool = False,
                   grad_output_buffer: list | None = None,
                   wgrad_deferral_limit: int | None = None) -> None:
    if gradient_accumulation_fusion or grad_output_buffer is not None:
        raise NotImplementedError(
            "nextlat_pt's linear layers do not fuse gradient accumulation or defer wgrads")


class TracedColumnParallelLinear(ColumnParallelLinear):
    """megatron's ColumnParallelLinear (W split by rows) with a traceable matmul."""

    def _forward_impl(self, input: Tensor, weight: Tensor, *args, **kwargs) -> Tensor:
        return _linear(input, weight, *args, **kwargs)


class TracedRowParallelLinear(RowParallelLinear):
    """megatron's RowParallelLinear (W split by columns) with a traceable matmul; the output's
    all-reduce (or reduce-scatter under SP) stays megatron's."""

    def _forward_impl(self, input: Tensor, weight: Tensor, *args, **kwargs) -> Tensor:
        return _linear(input, weight, *args, **kwargs)
