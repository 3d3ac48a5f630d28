"""Where a run starts, and putting it there: the checkpoint to resume or load, the
counters it restores, and what the log says about it.

`find_start` picks the checkpoint (resume.py's rules, decided on rank 0) before anything is
built; `restore_start` loads it into the built model and engine and returns the trainer
state the loop continues from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nextlat_pt.config import Config
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.train.checkpoint import Retention, read_trainer_state
from nextlat_pt.train.resume import StartPoint, choose_checkpoint, restore, schedule_changes
from nextlat_pt.train.trainer import TrainState


def find_start(cfg: Config, retention: Retention, log: Callable[[str], None]) -> StartPoint:
    """Fresh, this run's newest usable checkpoint, or `checkpoint.load`; notes a changed
    learning-rate schedule when a resume has steps left. Collective (rank 0 decides)."""
    point = choose_checkpoint(cfg, warn=lambda m: log(f"warning: {m}"),
                              verdicts=retention.verdicts)
    if point.none_usable and point.path is None:
        log(f"no usable checkpoint in {cfg.checkpoint_dir}: starting from step 0")
    done = read_trainer_state(point.path)["step"] if point.resume else 0
    if point.resume and done < cfg.train.max_steps:
        changes = schedule_changes(cfg, point.path, done)
        if changes:
            log(f"note: {changes}")
    return point


def already_finished(cfg: Config, point: StartPoint,
                     log: Callable[[str], None]) -> dict[str, Any] | None:
    """The summary of a resumed run whose checkpoint is at or past `train.max_steps`
    (nothing to train), else None."""
    if not point.resume:
        return None
    done = read_trainer_state(point.path)["step"]
    if done < cfg.train.max_steps:
        return None
    log(f"{cfg.run_dir} is already at step {done} ({point.path.name}), train.max_steps="
        f"{cfg.train.max_steps}: nothing to do; raise train.max_steps to train on")
    return {"final_step": done, "stopped": False, "nothing_to_do": True,
            "val_ce": float("nan"), "checkpoint": str(point.path), "run_dir": str(cfg.run_dir)}


def restore_start(cfg: Config, point: StartPoint, models: list[torch.nn.Module],
                  engine: TrainingEngine, tokenizer_fingerprint: str, data_fingerprint: str,
                  log: Callable[[str], None]) -> tuple[TrainState, str | None]:
    """Load `point` into `models` and `engine` (nothing for a fresh start); returns the
    trainer state to continue from and the wandb run id to continue (resumes only)."""
    if point.path is None:
        return TrainState(), None
    ckpt = point.path
    restored = restore(cfg, ckpt, point.resume, models, engine, tokenizer_fingerprint)
    saved = restored.trainer_state
    start = TrainState()
    if point.resume or not cfg.checkpoint.load_weights_only:
        start = TrainState(step=saved["step"], consumed_samples=saved["consumed_samples"],
                           tokens_seen=saved["tokens_seen"])
    log(f"{'resuming' if point.resume else 'starting'} from {ckpt} (step {saved['step']}, "
        f"optimizer {'restored' if restored.optimizer else 'fresh'}, "
        f"RNG {'restored' if restored.rng else 'fresh'})")
    for note in restored.notes:
        log(f"note: {note}")
    saved_data = (saved.get("data") or {}).get("fingerprint")
    if saved_data and saved_data != data_fingerprint:
        log(f"warning: the training data differs from the data of {ckpt} (another "
            f"data.train or re-prepared shards); the sample order continues by position "
            f"over the new data")
    return start, saved.get("wandb_id") if point.resume else None


def on_disk_at_start(point: StartPoint, start: TrainState) -> set[int]:
    """Steps whose checkpoint exists already: the one a run resumed from."""
    return {start.step} if point.path is not None and point.resume else set()


