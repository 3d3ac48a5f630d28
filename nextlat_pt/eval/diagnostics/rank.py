"""Effective rank of a set of hidden states (docs/method.md §9).

erank(H) = exp(−Σ p_i log p_i), p_i = σ_i / Σ_j σ_j over the singular values σ of H
[N positions, D]: the exponential of the Shannon entropy of the normalised spectrum
(Roy & Vetterli). It is D for a spectrum spread evenly over D directions and r for r equal
singular values and the rest zero.

Choices, following the paper's one-line definition:
- **no centring**: H is decomposed as given (the paper mentions none), so the mean hidden
  state counts as a direction;
- float64 SVD; normalised values p_i < 1e-12 are dropped (the paper's cut of "singular values
  < 1e-12"; applied after normalising, so the result does not depend on the scale of H and
  numerical zeros of a rank-deficient H never count).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Normalised singular values below this are numerical zeros (paper: "dropping < 1e-12").
SINGULAR_VALUE_CUT = 1e-12


def effective_rank(hidden: Tensor) -> float:
    """exp(entropy of the normalised singular values) of `hidden` [N, D] (rows: token
    positions; leading dims [B, T, D] are flattened into rows). Not centred; 0.0 for an
    all-zero matrix, which has no spectrum."""
    if hidden.dim() < 2:
        raise ValueError(f"effective_rank needs a matrix [N, D], got shape {tuple(hidden.shape)}")
    matrix = hidden.reshape(-1, hidden.shape[-1]).detach().to("cpu", torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError("effective_rank: the hidden states hold NaN or infinite values")
    sigma = torch.linalg.svdvals(matrix)
    total = float(sigma.sum())
    if total == 0.0:
        return 0.0
    p = sigma / total
    p = p[p >= SINGULAR_VALUE_CUT]
    p = p / p.sum()  # the cut mass is below 1e-12 per value; renormalise what is kept
    return math.exp(float(-(p * p.log()).sum()))
