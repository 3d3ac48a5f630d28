"""Logits -> the distribution tokens are drawn from: temperature, top-k, top-p, or greedy.

Speculative sampling is exact for whatever distribution the target defines, provided the
drafts are drawn from the draft distribution q that the acceptance test uses. So the SAME
warping is applied to the target's logits (giving p) and to ψ's draft logits (giving q): the
output then follows the warped target distribution exactly.

Greedy decoding is the τ -> 0 limit, handled explicitly: p and q are one-hot at the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How a token is chosen from logits. `greedy` overrides the other fields."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (use greedy "
                             f"decoding for the τ -> 0 limit)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

    def describe(self) -> str:
        """A short human-readable form for logs."""
        if self.greedy:
            return "greedy"
        parts = [f"τ={self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k={self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p={self.top_p:g}")
        return "sampling " + ", ".join(parts)


def warp(logits: Tensor, params: SamplingParams) -> Tensor:
    """[..., V] logits -> [..., V] probabilities (float32, or float64 for float64 logits)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(dtype)
    if params.greedy:
        return one_hot_argmax(logits)
    logits = logits / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        # Keep the smallest set of most likely tokens whose mass reaches top_p: a token is
        # dropped when the mass strictly before it (in sorted order) already reaches top_p,
        # so the most likely token always stays.
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def one_hot_argmax(logits: Tensor) -> Tensor:
    """The greedy distribution: all mass on the (first) largest logit."""
    out = torch.zeros_like(logits)
    return out.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)


def sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of [..., V] (non-negative, not necessarily normalised) weights."""
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator)
    return tokens.reshape(probs.shape[:-1])


def choose(probs: Tensor, params: SamplingParams, generator: torch.Generator | None) -> Tensor:
    """A token per row: the argmax for greedy decoding (no random draw), else a sample."""
    if params.greedy:
        return probs.argmax(dim=-1)
    return sample(probs, generator)
