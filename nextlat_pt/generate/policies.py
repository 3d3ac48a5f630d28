"""How many tokens ψ drafts per verification cycle: a static K (the paper's setting) or one of
two adaptive policies (the paper lists adaptive lengths as future work, §6).

- `StaticDraft(K)`: always K drafts.
- `ConfidenceDraft(threshold, k_max)`: draft while the draft distribution is confident:
  stop before proposing x_{t+j+1} when max_v q_j(v) < threshold (so a cycle may draft 0
  tokens, which is a plain decoding step), at most k_max drafts. With greedy decoding q is
  one-hot, so the confidence is taken from ψ's softmax at τ = 1.
- `AcceptanceDraft(k_init, k_min, k_max)`: K per row, adapted to recent acceptance: K+1
  after a fully accepted draft, K-1 after a rejection, kept in [k_min, k_max].

Every policy acts per batch row. None of them changes what is sampled: speculative sampling
is exact for any draft length, so only the speed depends on the policy.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class DraftPolicy(Protocol):
    """The draft length, row by row."""

    max_len: int  # the longest draft the policy can ask for (sizes the KV cache)

    def start(self, batch: int, device: torch.device) -> None:
        """Reset for a new batch of sequences."""

    def lengths(self) -> Tensor:
        """[B] the most drafts each row may make this cycle."""

    def keep_drafting(self, confidence: Tensor) -> Tensor:
        """[B] bool: whether to propose the draft whose distribution has max prob
        `confidence` [B]."""

    def update(self, drafted: Tensor, accepted: Tensor) -> None:
        """After verification: [B] drafts made and accepted this cycle (rows that took part)."""

    def describe(self) -> str:
        """A short name for logs and tables."""


def _check_len(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")


class _CappedDraft:
    """Every row may draft up to `max_len` tokens each cycle; subclasses decide when to stop."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self._lengths = torch.empty(0, dtype=torch.long)

    def start(self, batch: int, device: torch.device) -> None:
        self._lengths = torch.full((batch,), self.max_len, dtype=torch.long, device=device)

    def lengths(self) -> Tensor:
        return self._lengths

    def keep_drafting(self, confidence: Tensor) -> Tensor:
        return torch.ones_like(confidence, dtype=torch.bool)

    def update(self, drafted: Tensor, accepted: Tensor) -> None:
        pass


class StaticDraft(_CappedDraft):
    """K drafts every cycle."""

    def __init__(self, k: int) -> None:
        """`k`: the draft length."""
        _check_len("draft length", k)
        super().__init__(k)

    def describe(self) -> str:
        return f"static K={self.max_len}"


class ConfidenceDraft(_CappedDraft):
    """Draft while the draft distribution's top probability is at least `threshold`."""

    def __init__(self, threshold: float, k_max: int = 8) -> None:
        """`threshold` in (0, 1]; `k_max` caps the draft."""
        if not 0 < threshold <= 1:
            raise ValueError(f"confidence threshold={threshold} must be in (0, 1]")
        _check_len("max draft length", k_max)
        super().__init__(k_max)
        self.threshold = threshold

    def keep_drafting(self, confidence: Tensor) -> Tensor:
        return confidence >= self.threshold

    def describe(self) -> str:
        return f"adaptive threshold {self.threshold:g} (K≤{self.max_len})"


class AcceptanceDraft:
    """Per-row K that grows by one after a fully accepted draft and shrinks by one after a
    rejection."""

    def __init__(self, k_init: int = 2, k_min: int = 1, k_max: int = 8) -> None:
        """Start at `k_init`, stay within [k_min, k_max]."""
        _check_len("min draft length", k_min)
        if not k_min <= k_init <= k_max:
            raise ValueError(f"need k_min={k_min} <= k_init={k_init} <= k_max={k_max}")
        self.k_init, self.k_min, self.max_len = k_init, k_min, k_max
        self._lengths = torch.empty(0, dtype=torch.long)

    def start(self, batch: int, device: torch.device) -> None:
        self._lengths = torch.full((batch,), self.k_init, dtype=torch.long, device=device)

    def lengths(self) -> Tensor:
        return self._lengths

    def keep_drafting(self, confidence: Tensor) -> Tensor:
        return torch.ones_like(confidence, dtype=torch.bool)

    def update(self, drafted: Tensor, accepted: Tensor) -> None:
        # Only rows that drafted their full K say anything about K (a row near the end of
        # its budget drafts fewer).
        full = drafted == self._lengths
        grow = full & (accepted == drafted)
        shrink = full & (accepted < drafted)
        k = self._lengths + grow.long() - shrink.long()
        self._lengths = k.clamp(self.k_min, self.max_len)

    def describe(self) -> str:
        return f"adaptive acceptance (K∈[{self.k_min},{self.max_len}], start {self.k_init})"
