"""The training loop: read top to bottom.

    for step in 1..max_steps:
        micro-batches -> megatron schedule (forward + NextLat loss + backward per micro-batch)
        -> clip -> AdamW step -> metrics to the callbacks (logging rank only)
    validation -> final checkpoint

Building the pieces (model, data, optimizer) lives in `nextlat_pt.train.setup`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from nextlat_pt.config import Config
from nextlat_pt.model.gpt import NextLatGPT
from nextlat_pt.model.nextlat_loss import NextLatLossConfig
from nextlat_pt.parallel.distributed import ParallelLayout
from nextlat_pt.parallel.grads import clip_grad_norm
from nextlat_pt.train.callbacks import Callback
from nextlat_pt.train.optim import lr_at, set_lr
from nextlat_pt.train.step import MicroBatch, make_forward_step


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer moments."""

    step: int = 0
    consumed_samples: int = 0
    tokens_seen: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)


def _mean_of(records: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Average each logged term over the micro-batches of a step."""
    keys = records[0].keys() if records else []
    return {k: float(torch.stack([r[k].float() for r in records]).mean()) for k in keys}


class Trainer:
    """Owns the loop; the model, optimizer and data come in ready-made."""

    def __init__(
        self,
        cfg: Config,
        layout: ParallelLayout,
        model: NextLatGPT,
        optimizer: torch.optim.Optimizer,
        train_batches: Iterator[list[MicroBatch]],
        valid_batches: Callable[[], list[MicroBatch]],
        loss_cfg: NextLatLossConfig | None,
        autocast_dtype: torch.dtype | None = None,
        callbacks: list[Callback] | None = None,
        on_step_end: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.model = model
        self.optimizer = optimizer
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.callbacks = callbacks or []
        self.on_step_end = on_step_end
        self.state = TrainState()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.forward_backward = get_forward_backward_func()
        self.train_step_func = make_forward_step(loss_cfg, autocast_dtype)
        self.eval_step_func = make_forward_step(loss_cfg, autocast_dtype, ce_only=True)
        self.tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len

    def _emit(self, hook: str, payload: dict[str, Any]) -> None:
        if self.layout.is_logging_rank:
            for callback in self.callbacks:
                getattr(callback, hook)(payload)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over a global batch; returns this step's metrics."""
        cfg = self.cfg.train
        step = self.state.step + 1
        t_start = time.perf_counter()
        micro_batches = next(self.train_batches)
        t_data = time.perf_counter() - t_start

        lr = lr_at(step, cfg)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        records = self.forward_backward(
            forward_step_func=self.train_step_func,
            data_iterator=iter(micro_batches),
            model=[self.model],
            num_microbatches=len(micro_batches),
            seq_length=self.cfg.model.seq_len,
            micro_batch_size=cfg.micro_batch_size,
            forward_only=False,
        )
        grad_norm = clip_grad_norm(self.params, cfg.grad_clip)
        self.optimizer.step()

        metrics = _mean_of(records)
        if records and not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"non-finite loss {metrics['loss']} at step {step}; lower train.lr or check "
                f"the data (the run stops instead of training on NaNs)"
            )
        step_time = time.perf_counter() - t_start
        self.state.step = step
        self.state.consumed_samples += cfg.global_batch_size
        self.state.tokens_seen += self.tokens_per_step
        metrics.update(
            step=step,
            lr=lr,
            grad_norm=grad_norm,
            step_time=step_time,
            data_wait=t_data,
            tokens=self.state.tokens_seen,
            tokens_per_s=self.tokens_per_step / step_time,
        )
        if "latent" not in metrics:
            metrics.update(latent=None, kl=None)
        self.state.last_metrics = metrics
        return metrics

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean next-token CE over the validation batches (same batches every time)."""
        self.model.eval()
        batches = self.valid_batches()
        records = self.forward_backward(
            forward_step_func=self.eval_step_func,
            data_iterator=iter(batches),
            model=[self.model],
            num_microbatches=len(batches),
            seq_length=self.cfg.model.seq_len,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=True,
        )
        self.model.train()
        val_ce = _mean_of(records).get("ce", float("nan"))
        self._emit("on_eval", {"step": self.state.step, "val_ce": val_ce})
        return val_ce

    def fit(self, info: dict[str, Any]) -> dict[str, Any]:
        """Train to `train.max_steps`, validating every `train.eval_interval` and at the end."""
        cfg = self.cfg
        self._emit("on_train_start", info)
        self.model.train()
        val_ce = float("nan")
        while self.state.step < cfg.train.max_steps:
            metrics = self.train_step()
            step = self.state.step
            if step % cfg.logging.interval == 0 or step == cfg.train.max_steps or step == 1:
                self._emit("on_log", metrics)
            if cfg.train.eval_interval and step % cfg.train.eval_interval == 0:
                val_ce = self.evaluate()
            if self.on_step_end is not None:
                self.on_step_end(self)
        if not (cfg.train.eval_interval and self.state.step % cfg.train.eval_interval == 0):
            val_ce = self.evaluate()
        summary = {"final_step": self.state.step, "val_ce": val_ce,
                   "train_ce": self.state.last_metrics.get("ce")}
        return summary

    def close(self, summary: dict[str, Any]) -> None:
        """Let the callbacks flush and finish (wandb, metrics file)."""
        self._emit("on_train_end", summary)
