"""The training loop: read top to bottom.

    for step in 1..max_steps:
        this rank's micro-batches -> megatron schedule (forward, NextLat loss, backward)
        -> (PP > 1) sum the embedding copies' grads, DeepSpeed grad reduction over DP
        -> DeepSpeed step (clip + AdamW, ZeRO-sharded) -> metrics (averaged over DP)
        -> callbacks on the logging rank (the last rank, on the last pipeline stage)
        -> step hooks on every rank (the checkpointer)
    validation

Building the pieces (model, data, engine) lives in `nextlat_pt.train.run`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from nextlat_pt.config import Config
from nextlat_pt.parallel.deepspeed_engine import reduce_pipelined_gradients, set_lr
from nextlat_pt.parallel.distributed import ParallelLayout
from nextlat_pt.parallel.embedding_group import allreduce_embedding_grads
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.train.callbacks import Callback, StepHook
from nextlat_pt.train.optim import lr_at
from nextlat_pt.train.step import MicroBatch, make_forward_step
from nextlat_pt.train.train_module import NextLatTrainModule


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer moments."""

    step: int = 0
    consumed_samples: int = 0
    tokens_seen: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)


def reduce_metrics(records: list[dict[str, torch.Tensor]],
                   device: torch.device) -> dict[str, float]:
    """Mean of each term over the micro-batches, then over the data-parallel ranks.

    Only the last pipeline stage has records; the DP group of a last-stage rank holds only
    last-stage ranks, so the collective stays within that stage.
    """
    if not records:
        return {}
    keys = sorted(records[0])
    local = torch.stack([torch.stack([r[k].float() for r in records]).mean() for k in keys])
    local = local.to(device)
    if ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(local, group=ps.get_data_parallel_group())
        local /= ps.get_data_parallel_world_size()
    return dict(zip(keys, local.tolist()))


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Trainer:
    """Owns the loop; the engine and data come in ready-made."""

    def __init__(
        self,
        cfg: Config,
        layout: ParallelLayout,
        engine: TrainingEngine,
        chunks: list[NextLatTrainModule],
        train_batches: Iterator[list[MicroBatch]],
        valid_batches: Callable[[], list[MicroBatch]],
        device: torch.device,
        callbacks: list[Callback] | None = None,
        step_hooks: list[StepHook] | None = None,
        data_stats: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.engine = engine
        self.chunks = chunks
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.device = device
        self.callbacks = callbacks or []
        self.step_hooks = step_hooks or []
        self.data_stats = data_stats
        self.state = TrainState()
        self.forward_backward = get_forward_backward_func()
        # PP = 1: micro-batches go through the engine (its hooks reduce over DP at the last
        # micro-batch). PP > 1: the schedule drives the module chunks directly.
        self.pipelined = layout.pp > 1
        self.forward_step = make_forward_step(None if self.pipelined else engine)
        self.tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len

    def _emit(self, hook: str, payload: dict[str, Any]) -> None:
        if self.layout.is_logging_rank:
            for callback in self.callbacks:
                getattr(callback, hook)(payload)

    def _run_schedule(self, micro_batches: list[MicroBatch], forward_only: bool) -> list[dict]:
        # Interleaved pipelining: one iterator per model chunk, each over the same batches.
        iterators = [iter(micro_batches) for _ in self.chunks]
        return self.forward_backward(
            forward_step_func=self.forward_step,
            data_iterator=iterators if len(self.chunks) > 1 else iterators[0],
            model=self.chunks,
            num_microbatches=len(micro_batches),
            seq_length=self.cfg.model.seq_len,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=forward_only,
        )

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over a global batch; returns this step's metrics."""
        step = self.state.step + 1
        t_start = time.perf_counter()
        micro_batches = next(self.train_batches)
        t_data = time.perf_counter() - t_start

        lr = lr_at(step, self.cfg.train)
        set_lr(self.engine, lr)
        if self.pipelined:
            # Gradients accumulate untouched through the whole pipeline schedule; then the
            # embedding copies are summed and DeepSpeed reduces over data-parallel ranks.
            self.engine.set_gradient_accumulation_boundary(False)
            records = self._run_schedule(micro_batches, forward_only=False)
            self.engine.set_gradient_accumulation_boundary(True)
            embedding_params = [p for c in self.chunks for p in c.model.embedding_group_params()]
            allreduce_embedding_grads(embedding_params)
            reduce_pipelined_gradients(self.engine)
        else:
            records = self._run_schedule(micro_batches, forward_only=False)
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()

        metrics = reduce_metrics(records, self.device)
        bad = bool(metrics) and not math.isfinite(metrics["loss"])
        if _any_rank(bad, self.device):
            raise FloatingPointError(
                f"non-finite loss at step {step}; lower train.lr or check the data "
                f"(the run stops instead of training on NaNs)"
            )
        step_time = time.perf_counter() - t_start
        self.state.step = step
        self.state.consumed_samples += self.cfg.train.global_batch_size
        self.state.tokens_seen += self.tokens_per_step
        metrics.update(
            step=step,
            lr=lr,
            grad_norm=float(grad_norm) if grad_norm is not None else None,
            step_time=step_time,
            data_wait=t_data,
            tokens=self.state.tokens_seen,
            tokens_per_s=self.tokens_per_step / step_time,
        )
        metrics.setdefault("latent", None)
        metrics.setdefault("kl", None)
        skipped = self.data_stats().get("skipped_samples") if self.data_stats else 0
        if skipped:
            metrics["skipped_samples"] = int(skipped)
        self.state.last_metrics = metrics
        return metrics

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean next-token CE over the validation batches (same batches every time)."""
        batches = self.valid_batches()
        if not batches:
            return float("nan")
        for chunk in self.chunks:
            chunk.eval()
            chunk.ce_only = True
        try:
            records = self._run_schedule(batches, forward_only=True)
        finally:
            for chunk in self.chunks:
                chunk.train()
                chunk.ce_only = False
        val_ce = reduce_metrics(records, self.device).get("ce", float("nan"))
        self._emit("on_eval", {"step": self.state.step, "val_ce": val_ce})
        return val_ce

    def fit(self, info: dict[str, Any],
            stop_requested: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Train to `train.max_steps`, validating every `train.eval_interval` and at the end.

        `stop_requested` (a collective, checked after every step) ends the loop early: the
        summary then has `stopped=True` and no final validation.
        """
        cfg = self.cfg
        self._emit("on_train_start", info)
        for chunk in self.chunks:
            chunk.train()
        val_ce = float("nan")
        while self.state.step < cfg.train.max_steps:
            metrics = self.train_step()
            step = self.state.step
            if step % cfg.logging.interval == 0 or step == cfg.train.max_steps or step == 1:
                self._emit("on_log", metrics)
            if cfg.train.eval_interval and step % cfg.train.eval_interval == 0:
                val_ce = self.evaluate()
            for hook in self.step_hooks:
                hook.on_step_end(self)
            if stop_requested is not None and self.state.step < cfg.train.max_steps \
                    and stop_requested():
                return {"final_step": self.state.step, "stopped": True, "val_ce": val_ce,
                        "train_ce": self.state.last_metrics.get("ce")}
        if not (cfg.train.eval_interval and self.state.step % cfg.train.eval_interval == 0):
            val_ce = self.evaluate()
        return {"final_step": self.state.step, "stopped": False, "val_ce": val_ce,
                "train_ce": self.state.last_metrics.get("ce")}

    def close(self, summary: dict[str, Any]) -> None:
        """Let the callbacks flush and finish (wandb, metrics file)."""
        self._emit("on_train_end", summary)
