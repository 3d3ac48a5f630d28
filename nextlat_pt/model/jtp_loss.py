"""The joint multi-token prediction objective (JTP; the NextLat paper's Eq. 7, docs/method.md §8).

    L = CE_1 + λ · (1/d) Σ_{i=1..d} CE_{i+1}

    CE_1     = − log p_θ(x_{t+1} | h_t)                      (the usual next-token term)
    CE_{i+1} = − log p_θ(x_{t+i+1} | Fetch(h_t, x_{t+1:t+i}))  (teacher-forced future tokens)

each CE the masked mean over its positions. h_t is the final post-norm hidden state (the LM
head's input); Fetch (`jtp_fetch.py`) combines it with the embeddings of the true next i
tokens; its output goes through the model's own LM head. λ is `nextlat.jtp_lambda` (the
paper's λ_MTP, 1.0 in its FineWeb runs).

Position t has term i when x_{t+i+1} is in the window (t ≤ T − 1 − i) and is trained on,
and x_t .. x_{t+i} lie in one document (the teacher-forced tokens do not cross a boundary);
the target itself may be the next document's first token, as the next-token term's may
(the same rule as MTP's heads, `mtp_loss.head_targets`).

Memory: as MTP's heads, each term's logits are recomputed in backward (`recompute`), so one
term's V-wide logits exist at a time beside the next-token logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from megatron.core import tensor_parallel
from torch import Tensor

from nextlat_pt.model.mtp_loss import head_cross_entropy
from nextlat_pt.model.nextlat_loss import LossTerms


@dataclass(frozen=True)
class JTPLossConfig:
    """d, λ, and whether each term's logits are recomputed in backward (memory)."""

    steps: int = 1
    lambda_jtp: float = 1.0
    recompute: bool = True


def jtp_loss(*, logits: Tensor, hidden: Tensor, input_embeddings: Tensor,
             fetch: Callable[[Tensor, Tensor], Tensor],
             fetched_logits: Callable[[Tensor], Tensor],
             labels: Tensor, loss_mask: Tensor, doc_ids: Tensor | None,
             cfg: JTPLossConfig) -> LossTerms:
    """L = CE_1 + λ · (1/d) Σ_i CE_{i+1} for one micro-batch (module doc).

    Args:
        logits: the next-token vocab-parallel logits [T, B, V/tp].
        hidden: h, the final post-norm hidden states [T, B, D] (the whole sequence).
        input_embeddings: E(x_t) for the window's inputs [T, B, D].
        fetch: (h, E(x)) -> the fetched states [T, B, d, D]; state i predicts x_{t+i+1}.
        fetched_logits: one fetched state [T, B, D] -> its vocab-parallel logits.
        labels: [T, B], labels[t] = x_{t+1}.
        loss_mask: [T, B], 1 where x_{t+1} is a training target.
        doc_ids: [T, B] document of each input token, or None (one document).
        cfg: d, λ, recompute.
    """
    ce = head_cross_entropy(logits, labels, loss_mask, doc_ids, 1)
    fetched = fetch(hidden, input_embeddings)
    per_step = []
    for i in range(1, cfg.steps + 1):

        def ce_i(state: Tensor, i: int = i) -> Tensor:
            # term i predicts x_{t+i+1}: MTP's head k = i + 1 targets and mask
            return head_cross_entropy(fetched_logits(state), labels, loss_mask, doc_ids, i + 1)

        state = fetched[:, :, i - 1]
        if cfg.recompute and torch.is_grad_enabled():
            per_step.append(tensor_parallel.checkpoint(ce_i, False, state))
        else:
            per_step.append(ce_i(state))
    joint = torch.stack(per_step).mean()
    total = ce + cfg.lambda_jtp * joint
    return LossTerms(total=total, ce=ce.detach(),
                     extra={"jtp": joint.detach(),
                            **{f"ce_step{i}": term.detach()
                               for i, term in enumerate(per_step, start=1)}})
