"""RMSNorm that works with megatron's sequence parallelism.

megatron-core's torch fallback norm refuses `sequence_parallel=True` (only TE/Apex norms accept
it). Under sequence parallelism each TP rank normalises a different slice of the sequence, so
the norm's weight gradient is partial on every rank; we tag the weight with
`sequence_parallel = True` and the trainer all-reduces tagged gradients over the TP group.

Numerics follow Llama/HF: statistics in fp32, then scaled by the weight in the input dtype.
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · g. Builds from a megatron ModuleSpec or directly."""

    def __init__(self, hidden_size: int, eps: float = 1e-5,
                 config: TransformerConfig | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        # In the model's parameter dtype, as megatron's own layers: an fp32 weight would
        # promote a bf16 model's activations to fp32 (a cast pass, then fp32 inputs into the
        # next bf16 linear) wherever the model is used outside DeepSpeed's bf16 engine.
        if dtype is None:
            dtype = config.params_dtype if config is not None else torch.float32
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        sequence_parallel = bool(config is not None and config.sequence_parallel)
        self.weight.sequence_parallel = sequence_parallel

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension."""
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
