"""ψ as a plain PyTorch module, and the drafter built from it (docs/method.md §2, §6); the
drafter of MTP's heads (§7).

    ψ(h, e) = h + fc3 · GELU(fc2 · GELU(fc1 · RMSNorm([h ; e])))      (model/psi.py's math)

The drafter rolls ψ forward from the TRUE final post-norm hidden state h_t:
g_0 = h_t, g_j = ψ(g_{j-1}, E(x_{t+j})), draft logits W g_j through the frozen LM head W,
where E is the model's INPUT embedding (ψ never has a table of its own; with untied
embeddings E is not W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PSI_TENSOR_NAMES = ("norm.weight", "fc1.weight", "fc2.weight", "fc3.weight")


class Psi(nn.Module):
    """The latent dynamics model from its four weights (as `psi_file` stores them)."""

    def __init__(self, tensors: dict[str, Tensor], norm_eps: float,
                 dtype: torch.dtype = torch.float32) -> None:
        """`tensors`: norm.weight [2D], fc1.weight [H, 2D], fc2.weight [H, H], fc3 [D, H]."""
        super().__init__()
        missing = [k for k in PSI_TENSOR_NAMES if k not in tensors]
        if missing:
            raise KeyError(f"ψ tensors missing: {missing}")
        self.norm_eps = norm_eps
        self.norm = nn.Parameter(tensors["norm.weight"].to(dtype), requires_grad=False)
        self.fc1 = nn.Parameter(tensors["fc1.weight"].to(dtype), requires_grad=False)
        self.fc2 = nn.Parameter(tensors["fc2.weight"].to(dtype), requires_grad=False)
        self.fc3 = nn.Parameter(tensors["fc3.weight"].to(dtype), requires_grad=False)
        if self.fc1.shape[1] != 2 * self.fc3.shape[0]:
            raise ValueError(f"ψ's fc1 takes {self.fc1.shape[1]} inputs, but [h; e] has "
                             f"2·{self.fc3.shape[0]}")

    @property
    def hidden_size(self) -> int:
        """D, the model width ψ works in."""
        return self.fc3.shape[0]

    @torch.no_grad()
    def forward(self, hidden: Tensor, next_embedding: Tensor) -> Tensor:
        """ĥ_next from the current (true or predicted) state and the next token's embedding."""
        x = torch.cat([hidden, next_embedding], dim=-1)
        stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x32 = x.to(stats_dtype)
        x = self.norm * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True)
                                           + self.norm_eps)).to(x.dtype)
        x = F.gelu(F.linear(x, self.fc1))
        x = F.gelu(F.linear(x, self.fc2))
        return hidden + F.linear(x, self.fc3)


class Drafter:
    """ψ + the model's input embedding E + its LM head W: one draft step at a time."""

    def __init__(self, psi: Psi, embedding: Tensor, head: Tensor) -> None:
        """`embedding`: the input embedding [V, D] ψ reads; `head`: the LM head [V, D]."""
        if embedding.shape[1] != psi.hidden_size or head.shape[1] != psi.hidden_size:
            raise ValueError(f"ψ works in width {psi.hidden_size}, the embedding is "
                             f"{tuple(embedding.shape)} and the head {tuple(head.shape)}")
        self.psi = psi
        self.embedding = embedding
        self.head = head

    @torch.no_grad()
    def step(self, state: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
        """(g_{j-1} [B, D], x_{t+j} [B]) -> (g_j [B, D], draft logits W g_j [B, V])."""
        state = self.psi(state, F.embedding(token, self.embedding))
        return state, F.linear(state, self.head)


class MTPDrafter:
    """MTP's heads 2..n as a drafter (Gloeckle et al.'s self-speculative decoding).

    Its state is the heads' logits at the last true position t, [B, n − 1, V]
    (`decoder.MTPDecoderTarget` hands them over): draft step j gives head j+1's logits, the
    proposal for x_{t+j+1}. The heads read only x_≤t, so the drafted tokens do not feed
    back; at most n − 1 drafts per cycle (`max_len`).
    """

    def __init__(self, heads: int) -> None:
        """`heads`: n (the drafter proposes n − 1 tokens)."""
        if heads < 2:
            raise ValueError(f"MTP drafting needs at least 2 heads, got {heads}")
        self.max_len = heads - 1

    def step(self, state: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
        """(heads' logits left [B, m, V], x_{t+j} [B], unused) -> (the rest, the next)."""
        return state[:, 1:], state[:, 0]
