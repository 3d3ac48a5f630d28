"""The multi-token prediction objective (Gloeckle et al., 2024; docs/method.md §7).

The paper's loss is the cross-entropy of the next n tokens, each predicted by its own head
from the one shared trunk output:

    L_n = − Σ_t log P_θ(x_{t+n}, …, x_{t+1} | z_t)  =  − Σ_t Σ_{k=1..n} log P_θ(x_{t+k} | z_t)

    z_t = f_s(x_{≤t}),   P_θ(· | z_t) for head k = softmax( f_u( f_hk(z_t) ) )

with f_s the shared trunk, f_hk head k (one transformer layer), f_u the shared unembedding
(our final RMSNorm and LM head). Head 1 is the usual next-token prediction. We average where
the paper sums: L = (1/n) Σ_k CE_k, each CE_k the masked mean over its positions, so n only
changes what is predicted, not the loss's scale (as the NextLat terms average over d).

Position t (input token x_t) has a target for head k when x_{t+k} is in the window
(t ≤ T − k) and is trained on (its loss mask), and x_t .. x_{t+k-1} lie in one document: the
last step may cross into the next document, exactly as head 1's (the plain CE's) does.

Memory: the paper runs each head's forward and backward in turn so only one head's logits
exist at a time. Here the loss runs inside the last stage's forward and megatron's schedule
runs the backward later (where DeepSpeed's and sequence parallelism's gradient hooks fire),
so with `recompute_heads` each extra head is one activation checkpoint: its forward keeps
nothing but its scalar, and the backward recomputes it and back-propagates it alone before
the next one. Peak logits: head 1's (kept, as for NTP) plus one extra head's; the price is a
second forward of each extra head (one layer and one LM-head product per head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from megatron.core import tensor_parallel
from torch import Tensor

from nextlat_pt.model.nextlat_loss import LossTerms
from nextlat_pt.model.vocab_parallel import vocab_parallel_cross_entropy_mean


@dataclass(frozen=True)
class MTPLossConfig:
    """n, the heads, and whether each extra head is recomputed in backward (memory)."""

    heads: int = 2
    recompute_heads: bool = True


def head_targets(labels: Tensor, loss_mask: Tensor, doc_ids: Tensor | None,
                 k: int) -> tuple[Tensor, Tensor]:
    """Head k's targets x_{t+k} and mask for the positions t = 0 .. T-k ([T-k+1, B] each).

    labels[t] = x_{t+1}, so x_{t+k} = labels[t+k-1]; the mask is the loss mask of x_{t+k}
    times "x_t and x_{t+k-1} are in one document" (always true for k = 1)."""
    shift = k - 1
    targets = labels[shift:]
    mask = loss_mask[shift:].float()
    if doc_ids is not None and shift > 0:
        mask = mask * (doc_ids[:-shift] == doc_ids[shift:]).float()
    return targets, mask


def head_cross_entropy(logits: Tensor, labels: Tensor, loss_mask: Tensor,
                       doc_ids: Tensor | None, k: int) -> Tensor:
    """CE_k: the masked-mean CE of head k's vocab-parallel logits [T, B, V/tp] against
    x_{t+k}. The gradient is written over the logits (nothing reads them afterwards)."""
    targets, mask = head_targets(labels, loss_mask, doc_ids, k)
    rows = targets.shape[0]
    return vocab_parallel_cross_entropy_mean(logits[:rows], targets, mask, in_place=True)[0]


def mtp_loss(*, logits: Tensor, trunk: Tensor,
             head_logits: Callable[[int, Tensor], Tensor],
             labels: Tensor, loss_mask: Tensor, doc_ids: Tensor | None,
             cfg: MTPLossConfig) -> LossTerms:
    """L = (1/n) Σ_{k=1..n} CE_k for one micro-batch (module doc).

    Args:
        logits: head 1's vocab-parallel logits [T, B, V/tp] (the trunk's last layer, the
            final norm and the LM head: the usual next-token logits).
        trunk: z, the shared trunk output [T, B, D] (the last layer's input).
        head_logits: (k, z) -> head k's vocab-parallel logits, for k = 2 .. n.
        labels: [T, B], labels[t] = x_{t+1}.
        loss_mask: [T, B], 1 where x_{t+1} is a training target.
        doc_ids: [T, B] document of each input token, or None (one document).
        cfg: n, and whether each extra head runs as an activation checkpoint (one head's
            logits at a time; module doc).
    """
    per_head = [head_cross_entropy(logits, labels, loss_mask, doc_ids, 1)]
    for k in range(2, cfg.heads + 1):

        def ce_k(z: Tensor, k: int = k) -> Tensor:
            return head_cross_entropy(head_logits(k, z), labels, loss_mask, doc_ids, k)

        if cfg.recompute_heads and torch.is_grad_enabled():
            per_head.append(tensor_parallel.checkpoint(ce_k, False, trunk))
        else:
            per_head.append(ce_k(trunk))
    total = torch.stack(per_head).mean()
    return LossTerms(total=total, ce=per_head[0].detach(),
                     extra={f"ce_head{k}": ce.detach()
                            for k, ce in enumerate(per_head[1:], start=2)})
