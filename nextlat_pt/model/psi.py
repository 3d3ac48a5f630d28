"""ψ, the latent dynamics model (docs/method.md §2).

    ĥ_next = h + W3 · GELU(W2 · GELU(W1 · Norm([h ; E(x_next)])))

Three bias-free linear layers of width H = 128·round(proj_factor·2D/128), an RMSNorm over the
2D concatenation, and a residual: ψ predicts the change of the hidden state.

The first layer is computed without building the concatenation. RMSNorm scales a token's
whole 2D vector by one number r = 1/√(mean([h; e]²) + ε), so with W1 = [W1_h | W1_e] and the
gain g = [g_h | g_e]

    W1 · Norm([h ; e]) = W1_h · (g_h ⊙ h·r)  +  r · W1_e · (g_e ⊙ e).

The second term's matrix product does not depend on the rollout state, so `embed` computes it
(and Σe²) once for the whole sequence and every rollout step i reads its slice e[i:]: a d-step
rollout multiplies by W1_e once, not d times (a fifth of ψ's matmul FLOPs per extra step at
the default width H = 2D), and no [T, B, 2D] tensor is made or saved. A single step (d = 1,
and `forward`) keeps the concatenating form, which is then slightly cheaper.
The parameters are the unfused module's (`fc1` still holds all of W1), so checkpoints and the
HF export are unchanged.

The linears are megatron's with a matmul torch.compile can trace (`model/linear.py`), so
`train.compile` fuses a rollout step's norm, GELUs and residual like a decoder layer's.

Under tensor parallelism ψ is sharded like a transformer MLP so its per-rank cost shrinks with
TP: W1 column-parallel (H split), W2 row-parallel (all-reduce to full H), W3 column-parallel
with the D outputs gathered for the residual. The norm is replicated. Every full-width input
of the local W1 shard (h·r, g_e ⊙ e, and r where it scales the local W1_e product) passes
through `copy_to_tensor_model_parallel_region`, which sums its gradient over the TP ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nextlat_pt.model.linear import TracedColumnParallelLinear, TracedRowParallelLinear
from nextlat_pt.model.rmsnorm import RMSNorm


class EmbeddedInputs(NamedTuple):
    """ψ's first-layer terms from E(x) for every position of the sequence ([T, B, ...])."""

    projection: Tensor  # W1_e · (g_e ⊙ E(x)): [T, B, H/tp]
    square_sum: Tensor  # Σ E(x)² in fp32: [T, B, 1]

    def sliced(self, start: int) -> EmbeddedInputs:
        """The terms from sequence position `start` on."""
        return EmbeddedInputs(self.projection[start:], self.square_sum[start:])


class LatentDynamics(MegatronModule):
    """ψ(h, e) -> ĥ_next. Inputs and output are [..., D] with D the model width."""

    def __init__(self, config: TransformerConfig, width: int, zero_init_output: bool = False):
        """Build ψ; weights come from megatron's init (or `model.init.init_weights` later)."""
        # ψ always sees the full sequence (the caller gathers it under sequence parallelism).
        config = dataclasses.replace(config, sequence_parallel=False)
        super().__init__(config=config)
        d = config.hidden_size
        self.width = width
        self.norm = RMSNorm(2 * d, eps=config.layernorm_epsilon, dtype=config.params_dtype)
        common = dict(config=config, bias=False, init_method=config.init_method)
        self.fc1 = TracedColumnParallelLinear(2 * d, width, gather_output=False, **common)
        self.fc2 = TracedRowParallelLinear(
            width, width, input_is_parallel=True, skip_bias_add=False, **common
        )
        self.fc3 = TracedColumnParallelLinear(width, d, gather_output=True, **common)
        # normal(0, σ) for standalone use; NextLatGPT redraws them with `init_weights`.
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.fc3):
                torch.nn.init.normal_(layer.weight, 0.0, config.init_method_std)
        if zero_init_output:
            # ψ starts as the identity map: ĥ_next = h.
            torch.nn.init.zeros_(self.fc3.weight)

    def embed(self, next_embedding: Tensor) -> EmbeddedInputs:
        """The E(x) half of the first layer, for all positions at once (see the module doc)."""
        d = self.config.hidden_size
        gain_e = self.norm.weight[d:]
        weight_e = self.fc1.weight[:, d:]
        projection = F.linear(copy_to_tensor_model_parallel_region(gain_e * next_embedding),
                              weight_e)
        square_sum = next_embedding.float().pow(2).sum(dim=-1, keepdim=True)
        return EmbeddedInputs(projection, square_sum)

    def step(self, hidden: Tensor, inputs: EmbeddedInputs) -> Tensor:
        """ĥ_next from the state h and the embedded next tokens (same leading shape)."""
        d = self.config.hidden_size
        # The group passed explicitly: megatron warns when it looks it up itself, and a
        # warning stops torch.compile's graph.
        group = parallel_state.get_tensor_model_parallel_group()
        dtype = hidden.dtype
        h32 = hidden.float()
        # r = 1/√(mean over the 2D concatenation + ε), as RMSNorm computes it
        square_mean = (h32.pow(2).sum(dim=-1, keepdim=True) + inputs.square_sum) / (2 * d)
        r = torch.rsqrt(square_mean + self.norm.eps)
        normed_h = self.norm.weight[:d] * (h32 * r).to(dtype)
        x = F.linear(copy_to_tensor_model_parallel_region(normed_h, group=group),
                     self.fc1.weight[:, :d])
        x = x + inputs.projection * copy_to_tensor_model_parallel_region(r, group=group).to(dtype)
        x, _ = self.fc2(F.gelu(x))
        delta, _ = self.fc3(F.gelu(x))
        return hidden + delta

    def forward(self, hidden: Tensor, next_embedding: Tensor) -> Tensor:
        """ĥ_next from the current (true or predicted) state and the next token's embedding:
        the formula as written, with the concatenation (one step has nothing to share)."""
        x = self.norm(torch.cat([hidden, next_embedding], dim=-1))
        x, _ = self.fc1(x)
        x, _ = self.fc2(F.gelu(x))
        delta, _ = self.fc3(F.gelu(x))
        return hidden + delta


def rollout_step(psi: Callable[[Tensor, Tensor], Tensor], next_embeddings: Tensor,
                 horizon: int) -> Callable[[Tensor, int], Tensor]:
    """ψ as a d-step rollout calls it: step(ĥ, i) = ψ(ĥ, E(x_{t+i})) for t = 0 .. T-1-i.

    With d > 1, `LatentDynamics` embeds the sequence once for all i (`embed` + `step`). With
    d = 1 there is nothing to share and the concatenating form is slightly cheaper
    (docs/results/cpu_step.md, bench/psi_rollout.py), so ψ is called as written, as is any
    other ψ(h, e).
    """
    if isinstance(psi, LatentDynamics) and horizon > 1:
        # x_0 is nobody's next token: embed x_1 .. x_{T-1} once; step i starts at x_i.
        inputs = psi.embed(next_embeddings[1:])
        return lambda hidden, i: psi.step(hidden, inputs.sliced(i - 1))
    return lambda hidden, i: psi(hidden, next_embeddings[i:])
