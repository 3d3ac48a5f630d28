"""One micro-batch in the form megatron's schedules expect.

megatron's `get_forward_backward_func()` calls `forward_step(data_iterator, model)` once per
micro-batch; on the last pipeline stage it then calls the returned loss function on the
output and back-propagates the loss it returns (divided by the number of micro-batches).
The train module (model + NextLat loss) already returns (loss, detached terms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from torch import Tensor


@dataclass
class MicroBatch:
    """Model inputs [B, T] and loss targets [T, B] (sequence-first, like megatron's tensors)."""

    input_ids: Tensor
    labels: Tensor
    loss_mask: Tensor
    doc_ids: Tensor

    @classmethod
    def from_sample(cls, sample: dict[str, Tensor], device: torch.device) -> MicroBatch:
        """From packed windows of T+1 tokens: inputs x_0..x_{T-1}, labels x_1..x_T.

        A window's optional "loss_mask" [B, T+1] marks the tokens that are training targets
        (a prepared dataset's completions); the prediction at t is trained when x_{t+1} is one.
        Without it every label is trained.
        """
        tokens = sample["tokens"].to(device, non_blocking=True)
        doc_ids = sample["doc_ids"].to(device, non_blocking=True)
        labels = tokens[:, 1:].t().contiguous()
        loss_mask = sample.get("loss_mask")
        if loss_mask is None:
            loss_mask = torch.ones_like(labels, dtype=torch.float32)
        else:
            loss_mask = loss_mask.to(device)[:, 1:].t().float().contiguous()
        return cls(
            input_ids=tokens[:, :-1].contiguous(),
            labels=labels,
            loss_mask=loss_mask,
            doc_ids=doc_ids[:, :-1].t().contiguous(),
        )


def _loss_func(output: tuple[Tensor, dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    total, terms = output
    return total, terms


def make_forward_step(runner: Callable[..., object] | None = None) -> Callable:
    """A `forward_step_func` that feeds each MicroBatch to `runner` (the DeepSpeed engine),
    or, when `runner` is None, to the module chunk the schedule passes in (pipelining)."""

    def forward_step(data_iterator: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data_iterator)
        module = runner if runner is not None else model
        output = module(batch.input_ids, batch.labels, batch.loss_mask, batch.doc_ids)
        is_last = parallel_state.is_pipeline_last_stage(
            ignore_virtual=False, vp_stage=getattr(model, "vp_stage", None)
        )
        if not is_last:
            return output, None
        return output, _loss_func

    return forward_step
