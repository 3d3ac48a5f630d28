"""The module the engine trains: the model plus its objective, one micro-batch per call.

DeepSpeed wraps this module, not the bare model, because ZeRO-3 gathers partitioned
parameters only inside the wrapped module's forward: ψ and the LM head are used by the loss,
so the loss must run inside it. On the last pipeline stage forward() returns
(total loss, detached terms); on other stages the hidden states for the next stage.
"""

from __future__ import annotations

import torch
from megatron.core.enums import ModelType
from torch import Tensor

from nextlat_pt.model.gpt import NextLatGPT
from nextlat_pt.model.jtp_loss import JTPLossConfig, jtp_loss
from nextlat_pt.model.mtp_loss import MTPLossConfig, mtp_loss
from nextlat_pt.model.nextlat_loss import NextLatLossConfig, next_token_loss, nextlat_loss


class NextLatTrainModule(torch.nn.Module):
    """model + loss; forward(input_ids, labels, loss_mask, doc_ids) -> loss or hidden."""

    model_type = ModelType.encoder_or_decoder  # read by megatron's schedules

    def __init__(self, model: NextLatGPT,
                 loss_cfg: NextLatLossConfig | MTPLossConfig | JTPLossConfig | None) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg
        self.ce_only = False  # validation: next-token CE only
        self.vp_stage = model.gpt.vp_stage  # interleaved pipelining: this chunk's index

    @property
    def config(self):
        """megatron's TransformerConfig (the schedules read `no_sync_func` etc. from it)."""
        return self.model.config

    def set_input_tensor(self, input_tensor: Tensor | list[Tensor]) -> None:
        """Pipeline parallelism: the activation received from the previous stage."""
        self.model.set_input_tensor(input_tensor)

    def forward(self, input_ids: Tensor, labels: Tensor, loss_mask: Tensor,
                doc_ids: Tensor) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        output = self.model(input_ids)
        if not self.model.post_process:
            return output.hidden
        if self.ce_only or (self.model.psi is None and output.trunk is None
                            and self.model.jtp_fetch is None):
            ce = next_token_loss(output.logits, labels, loss_mask)
            return ce, {"loss": ce.detach().clone(), "ce": ce.detach().clone()}
        if isinstance(self.loss_cfg, MTPLossConfig):
            terms = mtp_loss(
                logits=output.logits,
                trunk=output.trunk,
                head_logits=lambda k, z: self.model.head_logits(k, z, output.rotary_pos_emb),
                labels=labels,
                loss_mask=loss_mask,
                doc_ids=doc_ids,
                cfg=self.loss_cfg,
            )
            return terms.total, terms.as_dict()
        if isinstance(self.loss_cfg, JTPLossConfig):
            terms = jtp_loss(
                logits=output.logits,
                hidden=output.hidden,
                input_embeddings=output.input_embeddings,
                fetch=self.model.jtp_fetch,
                fetched_logits=self.model.fetched_logits,
                labels=labels,
                loss_mask=loss_mask,
                doc_ids=doc_ids,
                cfg=self.loss_cfg,
            )
            return terms.total, terms.as_dict()
        terms = nextlat_loss(
            hidden=output.hidden,
            logits=output.logits,
            labels=labels,
            input_embeddings=output.input_embeddings,
            head_weight=self.model.head_weight(),
            psi=self.model.psi,
            loss_mask=loss_mask,
            doc_ids=doc_ids,
            cfg=self.loss_cfg,
        )
        return terms.total, terms.as_dict()
