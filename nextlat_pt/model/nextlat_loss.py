"""The NextLat objective (docs/method.md §1-§5), on the last pipeline stage.

    L = CE + λ_h · (1/d) Σ_{i=1..d} SmoothL1(ĥ_{t+i}, sg[h_{t+i}])
           + λ_KL · (1/d) Σ_{i=1..d} KL( p(·|sg h_{t+i}) ‖ p_frozen-head(·|ĥ_{t+i}) )

    ĥ_t := h_t,   ĥ_{t+i} = ψ(ĥ_{t+i-1}, E(x_{t+i}))     (teacher-forced, no detach)

h_t is the final post-norm hidden state, the exact input of the LM head. All tensors are
sequence-first, as megatron keeps them: [T, B, ...]. Position t holds the input token x_t,
its hidden state h_t, and predicts labels[t] = x_{t+1}.

Reductions (the paper leaves some open; each is a field of NextLatLossConfig):
- CE: mean over positions where loss_mask is 1.
- Smooth L1 (β = 1): mean over every element of the valid positions, so λ_h does not depend on
  the width D. Not masked on prompt positions (belief states form while reading the prompt).
- KL: sum over the vocabulary, mean over valid positions, prompt positions masked at t+i.
- A pair (t, i) is valid only if x_t .. x_{t+i} lie in one document (packed sequences).

Memory: the CE and the KL walk the tokens in chunks (`vocab_parallel`, `frozen_head_kl`), so
no fp32 [T, B, V] tensor exists and no rollout step keeps a V-wide one; the teacher is the
CE logits themselves plus the CE's log-normaliser per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from nextlat_pt.model.frozen_head_kl import (
    DEFAULT_CHUNK_TOKENS,
    frozen_head_kl,
    teacher_log_normalizer,
)
from nextlat_pt.model.psi import rollout_step
from nextlat_pt.model.vocab_parallel import vocab_parallel_cross_entropy_mean


@dataclass(frozen=True)
class NextLatLossConfig:
    """The loss's knobs; defaults follow the paper's 1.3B setting (d=1, λ_h = λ_KL = 1)."""

    horizon: int = 1  # d: rollout steps of ψ
    lambda_latent: float = 1.0  # λ_h
    lambda_kl: float = 1.0  # λ_KL
    smooth_l1_beta: float = 1.0  # PyTorch's default, as in the official code
    kl_temperature: float = 1.0  # not stated in the paper; τ = 1
    detach_next_embedding: bool = False  # open point: the paper's code likely lets it train
    mask_prompt_in_latent: bool = False  # the paper does not mask the latent loss on prompts
    kl_chunk_tokens: int = DEFAULT_CHUNK_TOKENS  # tokens decoded at once in the KL (memory)
    fused_kl: bool = False  # the KL's per-chunk V-wide passes compiled (train.compile)


@dataclass
class LossTerms:
    """The total (differentiable) and each term (detached, for logging)."""

    total: Tensor
    ce: Tensor
    latent: Tensor | None = None
    kl: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)  # further named terms (MTP heads)

    def as_dict(self) -> dict[str, Tensor]:
        """The detached terms that exist, keyed by their metric names.

        `loss` is a copy: megatron's schedule divides the returned loss in place.
        """
        out = {"loss": self.total.detach().clone(), "ce": self.ce}
        if self.latent is not None:
            out["latent"] = self.latent
        if self.kl is not None:
            out["kl"] = self.kl
        return {**out, **self.extra}


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` is 1; 0 when nothing is valid (never NaN)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def next_token_loss(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> Tensor:
    """CE over vocab-parallel logits [T, B, V/tp]: the plain next-token (NTP) objective.

    The gradient is written over the logits: read nothing from them afterwards."""
    return vocab_parallel_cross_entropy_mean(logits, labels, loss_mask, in_place=True)[0]


def same_document(doc_ids: Tensor | None, i: int, like: Tensor) -> Tensor:
    """[T-i, B] bool: does the rollout from t to t+i stay inside one document?"""
    if doc_ids is None:
        return torch.ones(like.shape[0] - i, like.shape[1], dtype=torch.bool, device=like.device)
    return doc_ids[:-i] == doc_ids[i:]


def mean_weights(mask: Tensor) -> Tensor:
    """Per-position weights that turn a weighted sum into `masked_mean(·, mask)`."""
    mask = mask.float()
    return mask / mask.sum().clamp(min=1.0)


def nextlat_loss(
    *,
    hidden: Tensor,
    logits: Tensor,
    labels: Tensor,
    input_embeddings: Tensor,
    head_weight: Tensor,
    psi: Callable[[Tensor, Tensor], Tensor],
    loss_mask: Tensor,
    doc_ids: Tensor | None,
    cfg: NextLatLossConfig,
) -> LossTerms:
    """The NextLat loss for one micro-batch.

    Args:
        hidden: h, [T, B, D], final post-norm hidden states (not detached).
        logits: [T, B, V/tp], the LM head applied to `hidden` (vocab-parallel under TP).
            The CE's input and the KL's teacher; not modified.
        labels: [T, B], labels[t] = x_{t+1}.
        input_embeddings: E(x_t), [T, B, D], from the model's shared input embedding.
        head_weight: the local LM-head weight [V/tp, D] (frozen inside the KL).
        psi: the latent dynamics model, ĥ_next = psi(ĥ, E(x_next)).
        loss_mask: [T, B], 1 where the prediction made at t (of x_{t+1}) is trained on.
        doc_ids: [T, B] document index of each input token, or None (one document).
        cfg: λs, horizon and the open choices.
    """
    loss_mask = loss_mask.float()
    d = cfg.horizon
    # The CE first: its chunked pass leaves the logits intact and yields each position's
    # log-normaliser. The teacher distributions p(·|sg h_{t+i}) = softmax(logits/τ),
    # detached, are the logits plus that log-normaliser (at τ = 1; another pass otherwise).
    ce, lse = vocab_parallel_cross_entropy_mean(logits, labels, loss_mask)
    teacher_lse = lse if cfg.kl_temperature == 1.0 else teacher_log_normalizer(
        logits, cfg.kl_temperature, cfg.kl_chunk_tokens)

    next_embeddings = input_embeddings.detach() if cfg.detach_next_embedding else input_embeddings
    psi_step = rollout_step(psi, next_embeddings, d)  # ψ(ĥ, E(x_{t+i})), see psi.py
    target = hidden.detach()  # sg[h]: regression targets

    latent_loss = hidden.new_zeros(())
    kl_loss = hidden.new_zeros(())
    predicted = hidden  # ĥ_t := h_t; gradients reach the trunk through ψ's input
    for i in range(1, d + 1):
        # ĥ_{t+i} for t = 0 .. T-1-i, fed the true token x_{t+i} (teacher forcing)
        predicted = psi_step(predicted[:-1], i)
        in_document = same_document(doc_ids, i, hidden).float()

        latent_mask = in_document
        if cfg.mask_prompt_in_latent:
            latent_mask = latent_mask * loss_mask[i:]
        l1 = F.smooth_l1_loss(predicted, target[i:], beta=cfg.smooth_l1_beta, reduction="none")
        latent_loss = latent_loss + masked_mean(l1.mean(dim=-1), latent_mask)

        if cfg.lambda_kl != 0.0:
            # KL(p(·|sg h_{t+i}) ‖ softmax(sg[W] ĥ_{t+i})), mean over the valid positions
            kl_loss = kl_loss + frozen_head_kl(
                predicted, head_weight, logits[i:], teacher_lse[i:],
                mean_weights(in_document * loss_mask[i:]), cfg.kl_temperature,
                cfg.kl_chunk_tokens, fused=cfg.fused_kl)

    latent_loss = latent_loss / d
    kl_loss = kl_loss / d
    total = ce + cfg.lambda_latent * latent_loss + cfg.lambda_kl * kl_loss
    return LossTerms(
        total=total,
        ce=ce.detach(),
        latent=latent_loss.detach(),
        kl=kl_loss.detach() if cfg.lambda_kl != 0.0 else None,
    )
