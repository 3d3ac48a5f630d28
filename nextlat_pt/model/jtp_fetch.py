"""Fetch, the bottleneck module of joint multi-token prediction (JTP; docs/method.md §8).

JTP (Ahn, Lamb & Langford, 2025, as the NextLat paper's baseline, its Eq. 7) predicts the
tokens after the next one from the hidden state h_t and the teacher-forced tokens between:

    p_θ(x_{t+i+1} | Fetch(h_t, x_{t+1:t+i})),   i = 1 .. d

Neither paper pins Fetch's architecture down beyond "an embedding combining h_t with the
teacher-forced tokens". Ours (the choices, docs/method.md §8):
- for every position t a short sequence of d + 1 slots: slot 0 is h_t, slot j is the input
  embedding E(x_{t+j}); each slot adds a learned offset vector (`offsets`, [d + 1, D]) so
  the slots are ordered;
- one pre-norm causal self-attention block over those slots (the model's head count, full
  multi-head, no MLP): slot i sees h_t and x_{t+1..t+i} and nothing else, so everything
  Fetch knows of the past comes through h_t (the bottleneck);
- its own output RMSNorm, then the model's LM head: slot i's logits predict x_{t+i+1}.
  Fetch has no MLP: at the paper's 1.3B setting JTP adds about 20M parameters (1.34B vs
  1.32B), the size of one attention block (4·D² ≈ 17M at D = 2048), not of a decoder layer.
  The d terms are computed in parallel (one attention over d + 1 slots), not in sequence.

Under tensor parallelism Fetch is sharded like an attention block: the q/k/v projection is
column-parallel with the output laid out [heads, 3, head_dim] so each rank holds whole heads,
the output projection row-parallel (all-reduced). It always sees the whole sequence (the
model gathers h under sequence parallelism, as for ψ), so every TP rank computes the same
loss.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nextlat_pt.model.linear import TracedColumnParallelLinear, TracedRowParallelLinear
from nextlat_pt.model.rmsnorm import RMSNorm


def fetch_parameter_count(hidden_size: int, steps: int) -> int:
    """Fetch's parameters at TP=1: offsets (d+1)·D, q/k/v 3·D², output D², two norms 2·D."""
    return (steps + 1) * hidden_size + 4 * hidden_size * hidden_size + 2 * hidden_size


def fetch_slots(hidden: Tensor, embeddings: Tensor, steps: int) -> Tensor:
    """The slot sequences [T, B, d + 1, D]: slot 0 = h_t, slot j = E(x_{t+j}).

    `embeddings[t]` is E(x_t) for the window's inputs; slots past the window's end are zero
    (their outputs are never trained: the loss masks those positions)."""
    seq = hidden.shape[0]
    padded = F.pad(embeddings, (0, 0, 0, 0, 0, steps))
    slots = [hidden] + [padded[j:j + seq] for j in range(1, steps + 1)]
    return torch.stack(slots, dim=2)


class Fetch(MegatronModule):
    """Fetch(h, E(x)) -> the d fetched states [T, B, d, D]; state i predicts x_{t+i+1}."""

    def __init__(self, config: TransformerConfig, steps: int) -> None:
        # Fetch always sees the full sequence (the caller gathers it under sequence
        # parallelism), as ψ does.
        config = dataclasses.replace(config, sequence_parallel=False)
        super().__init__(config=config)
        d = config.hidden_size
        self.steps = steps
        self.num_heads = config.num_attention_heads
        self.offsets = torch.nn.Parameter(torch.zeros(steps + 1, d, dtype=config.params_dtype))
        self.offsets.embedding_like = True  # one vector per slot: AdamW's side under Muon
        self.norm = RMSNorm(d, eps=config.layernorm_epsilon, dtype=config.params_dtype)
        common = dict(config=config, bias=False, init_method=config.init_method)
        self.qkv = TracedColumnParallelLinear(d, 3 * d, gather_output=False, **common)
        self.proj = TracedRowParallelLinear(d, d, input_is_parallel=True, skip_bias_add=False,
                                            **common)
        self.out_norm = RMSNorm(d, eps=config.layernorm_epsilon, dtype=config.params_dtype)
        # normal(0, σ) for standalone use; NextLatGPT redraws them with `init_weights`.
        with torch.no_grad():
            for weight in (self.offsets, self.qkv.weight, self.proj.weight):
                torch.nn.init.normal_(weight, 0.0, config.init_method_std)

    def forward(self, hidden: Tensor, embeddings: Tensor) -> Tensor:
        """The fetched states for every position: [T, B, D] h and E(x) -> [T, B, d, D]."""
        seq, batch, width = hidden.shape
        slots = fetch_slots(hidden, embeddings, self.steps) + self.offsets
        tp = parallel_state.get_tensor_model_parallel_world_size()
        heads = self.num_heads // tp
        qkv, _ = self.qkv(self.norm(slots))  # [T, B, d+1, 3·D/tp], laid out [heads, 3, hd]
        qkv = qkv.view(seq * batch, self.steps + 1, heads, 3, width // self.num_heads)
        q, k, v = (qkv[:, :, :, n].transpose(1, 2) for n in range(3))  # [TB, heads, d+1, hd]
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mixed = mixed.transpose(1, 2).reshape(seq, batch, self.steps + 1, heads * q.shape[-1])
        out, _ = self.proj(mixed)
        return self.out_norm((slots + out)[:, :, 1:])
