"""One micro-batch through the model and the loss, in the form megatron's schedules expect.

megatron's `get_forward_backward_func()` calls `forward_step(data_iterator, model)` once per
micro-batch; on the last pipeline stage it then calls the returned loss function on the
model's output and back-propagates the loss it returns (divided by the number of
micro-batches). The loss function also returns the detached terms for logging.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import parallel_state
from torch import Tensor

from nextlat_pt.model.gpt import ModelOutput, NextLatGPT
from nextlat_pt.model.nextlat_loss import NextLatLossConfig, next_token_loss, nextlat_loss


@dataclass
class MicroBatch:
    """Model inputs [B, T] and loss targets [T, B] (sequence-first, like megatron's tensors)."""

    input_ids: Tensor
    labels: Tensor
    loss_mask: Tensor
    doc_ids: Tensor

    @classmethod
    def from_sample(cls, sample: dict[str, Tensor], device: torch.device) -> MicroBatch:
        """From packed windows of T+1 tokens: inputs x_0..x_{T-1}, labels x_1..x_T."""
        tokens = sample["tokens"].to(device, non_blocking=True)
        doc_ids = sample["doc_ids"].to(device, non_blocking=True)
        labels = tokens[:, 1:].t().contiguous()
        loss_mask = sample.get("loss_mask")
        if loss_mask is None:
            loss_mask = torch.ones_like(labels, dtype=torch.float32)
        else:
            loss_mask = loss_mask.to(device)[:, :-1].t().float().contiguous()
        return cls(
            input_ids=tokens[:, :-1].contiguous(),
            labels=labels,
            loss_mask=loss_mask,
            doc_ids=doc_ids[:, :-1].t().contiguous(),
        )


def compute_loss(model: NextLatGPT, loss_cfg: NextLatLossConfig | None, batch: MicroBatch,
                 output: ModelOutput, ce_only: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """The objective for one micro-batch: NextLat when ψ exists, else plain next-token CE."""
    if loss_cfg is None or model.psi is None or ce_only:
        ce = next_token_loss(output.logits, batch.labels, batch.loss_mask)
        return ce, {"loss": ce.detach().clone(), "ce": ce.detach().clone()}
    terms = nextlat_loss(
        hidden=output.hidden,
        logits=output.logits,
        labels=batch.labels,
        input_embeddings=output.input_embeddings,
        head_weight=model.head_weight(),
        psi=model.psi,
        loss_mask=batch.loss_mask,
        doc_ids=batch.doc_ids,
        cfg=loss_cfg,
    )
    return terms.total, terms.as_dict()


def make_forward_step(loss_cfg: NextLatLossConfig | None, autocast_dtype: torch.dtype | None,
                      ce_only: bool = False) -> Callable:
    """A `forward_step_func` for megatron's schedules over an iterator of MicroBatch."""

    def forward_step(data_iterator: Iterator[MicroBatch], model: NextLatGPT):
        batch = next(data_iterator)
        device_type = batch.input_ids.device.type
        autocast = (
            torch.autocast(device_type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            output = model(batch.input_ids)
        if not parallel_state.is_pipeline_last_stage():
            return output.hidden, None
        return output, partial(compute_loss, model, loss_cfg, batch, ce_only=ce_only)

    return forward_step
