"""ψ, the latent dynamics model (NEXTLAT_METHOD.md §2).

    ĥ_next = h + W3 · GELU(W2 · GELU(W1 · Norm([h ; E(x_next)])))

Three bias-free linear layers of width H = 128·round(proj_factor·2D/128), an RMSNorm over the
2D concatenation, and a residual: ψ predicts the change of the hidden state.

Under tensor parallelism ψ is sharded like a transformer MLP so its per-rank cost shrinks with
TP: W1 column-parallel (H split), W2 row-parallel (all-reduce to full H), W3 column-parallel
with the D outputs gathered for the residual. The norm is replicated.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nextlat_pt.model.rmsnorm import RMSNorm


def psi_width(hidden_size: int, proj_factor: float) -> int:
    """The official width rule: 128 · round(proj_factor · 2D / 128) (0 for tiny D)."""
    return 128 * round(proj_factor * 2 * hidden_size / 128)


class LatentDynamics(MegatronModule):
    """ψ(h, e) -> ĥ_next. Inputs and output are [..., D] with D the model width."""

    def __init__(self, config: TransformerConfig, width: int, zero_init_output: bool = False):
        """Build ψ; weights come from megatron's init (or `model.init.init_weights` later)."""
        # ψ always sees the full sequence (the caller gathers it under sequence parallelism).
        config = dataclasses.replace(config, sequence_parallel=False)
        super().__init__(config=config)
        d = config.hidden_size
        self.width = width
        self.norm = RMSNorm(2 * d, eps=config.layernorm_epsilon)
        common = dict(config=config, bias=False, init_method=config.init_method)
        self.fc1 = ColumnParallelLinear(2 * d, width, gather_output=False, **common)
        self.fc2 = RowParallelLinear(
            width, width, input_is_parallel=True, skip_bias_add=False, **common
        )
        self.fc3 = ColumnParallelLinear(width, d, gather_output=True, **common)
        # normal(0, σ) for standalone use; NextLatGPT redraws them with `init_weights`.
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.fc3):
                torch.nn.init.normal_(layer.weight, 0.0, config.init_method_std)
        if zero_init_output:
            # ψ starts as the identity map: ĥ_next = h.
            torch.nn.init.zeros_(self.fc3.weight)

    def forward(self, hidden: Tensor, next_embedding: Tensor) -> Tensor:
        """ĥ_next from the current (true or predicted) state and the next token's embedding."""
        x = self.norm(torch.cat([hidden, next_embedding], dim=-1))
        x, _ = self.fc1(x)
        x, _ = self.fc2(F.gelu(x))
        delta, _ = self.fc3(F.gelu(x))
        return hidden + delta
