"""Every save of a run, on every rank: periodic, on a stop request, at the end.

`Checkpointer` is the trainer's all-rank step hook (`callbacks.StepHook`): after each step it
finalizes background saves that have finished everywhere and saves on `checkpoint.interval`.
It remembers which steps are already on disk (the checkpoint a run resumed from, an interval
save that landed on the stop step), so no step is written twice. What a checkpoint holds and
how it is written atomically is `train/checkpoint.py`'s business; the run-level facts every
trainer state carries (tokenizer, data, wandb id) come from `RunRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from nextlat_pt.config import Config
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.train.callbacks import StepHook
from nextlat_pt.train.checkpoint import AsyncSaves, Retention, save_checkpoint, step_dir_name

if TYPE_CHECKING:
    from nextlat_pt.train.trainer import Trainer


def from_logging_rank(value: Any) -> Any:
    """`value` as the logging (last) rank holds it, on every rank: the losses live on the
    last rank, rank 0 writes the trainer state. Collective."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=dist.get_world_size() - 1)
    return box[0]


@dataclass
class RunRecord:
    """The run-level facts every checkpoint's trainer state carries besides the counters.

    `tokenizer` and `data` hold absolute paths, and the checkpoint keeps its own copy of the
    tokenizer: `generate`, `convert` and `eval` run from other directories (a Slurm job, a
    later session)."""

    tokenizer: dict[str, Any]
    data: dict[str, Any]
    wandb_id: str | None = None
    embedding_replica_max_abs_diff: float | None = None  # measured after the last step

    def trainer_state(self, trainer: Trainer) -> dict[str, Any]:
        """The trainer state for a checkpoint at the trainer's current step. Collective."""
        return {
            "step": trainer.state.step,
            "consumed_samples": trainer.state.consumed_samples,
            "tokens_seen": trainer.state.tokens_seen,
            "tokenizer": self.tokenizer,
            "data": self.data,
            "wandb_id": self.wandb_id,
            "last_metrics": from_logging_rank(trainer.state.last_metrics),
            "embedding_replica_max_abs_diff": self.embedding_replica_max_abs_diff,
        }


class Checkpointer(StepHook):
    """Saves the run's checkpoints; every rank holds one and calls it at the same points."""

    def __init__(self, cfg: Config, models: list[torch.nn.Module], engine: TrainingEngine,
                 retention: Retention, record: RunRecord, log: Callable[[str], None],
                 on_disk: set[int] | None = None) -> None:
        """`on_disk`: steps whose checkpoint already exists (the one a run resumed from)."""
        self.cfg = cfg
        self.models = models
        self.engine = engine
        self.retention = retention
        self.record = record
        self.log = log
        self.on_disk = set(on_disk or ())
        self.async_saves = AsyncSaves() if cfg.checkpoint.async_save else None

    def path_of(self, step: int) -> Path:
        return self.cfg.checkpoint_dir / step_dir_name(step)

    def save(self, trainer: Trainer, wait: bool = False) -> Path:
        """Save the trainer's current step; `wait` also blocks until an async save is on
        disk. Returns the step directory (complete once finalized)."""
        started = time.perf_counter()
        step = trainer.state.step
        path = save_checkpoint(self.cfg, self.models, self.engine, step,
                               self.record.trainer_state(trainer), self.async_saves,
                               self.retention)
        self.on_disk.add(step)
        if wait:
            self.wait()
        took = time.perf_counter() - started
        if self.async_saves is None or wait:
            self.log(f"saved step {step} in {took:.1f} s: {path}")
        else:
            self.log(f"saving step {step} in the background (training paused {took:.1f} s): "
                     f"{path}")
        return path

    def on_step_end(self, trainer: Trainer) -> None:
        """Finalize background saves finished everywhere; save on `checkpoint.interval`
        (the last step is saved by `ensure_saved` at the end instead)."""
        if self.async_saves is not None:
            self.async_saves.poll()
        interval, step = self.cfg.checkpoint.interval, trainer.state.step
        if interval and step % interval == 0 and step != self.cfg.train.max_steps:
            self.save(trainer)

    def ensure_saved(self, trainer: Trainer) -> Path:
        """The trainer's current step on disk, complete: saved now unless it already was,
        and every background save finished."""
        step = trainer.state.step
        path = self.path_of(step) if step in self.on_disk else self.save(trainer, wait=True)
        self.wait()
        return path

    def wait(self) -> None:
        """Block until every background save is on disk and finalized (collective)."""
        if self.async_saves is not None:
            self.async_saves.wait()
