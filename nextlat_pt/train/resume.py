"""Where a run starts: fresh, its own newest complete checkpoint, or another run's.

Relaunching the same command resumes (Megatron/OLMo-core style): the run's checkpoint
directory is searched for the newest checkpoint that is complete and passes its checksums;
newer broken ones are skipped with a warning naming them. `checkpoint.load` starts from
another run instead (optionally weights only, for fine-tuning).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.checkpointing.format import (
    is_complete,
    list_checkpoints,
    read_trainer_state,
    verify_checksums,
)
from nextlat_pt.checkpointing.retention import Verdicts, find_latest_valid
from nextlat_pt.config import Config, ConfigError, load_config, weight_shape
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.train.checkpoint import Restored, load_checkpoint


def _broadcast_str(value: str | None) -> str | None:
    """Rank 0's decision, on every rank (only rank 0 reads and hashes the files)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class StartPoint:
    """Where the run starts: `path` (None: from scratch), whether it resumes this run, and
    whether this run's checkpoint directory held step directories none of which was usable."""

    path: Path | None
    resume: bool
    none_usable: bool = False


def choose_checkpoint(cfg: Config, warn: Callable[[str], None],
                      verdicts: Verdicts | None = None) -> StartPoint:
    """Decide on rank 0 (which alone reads and hashes the files) and tell every rank; the
    warnings about skipped checkpoints go to `warn` on every rank (the logging rank prints).
    `verdicts` keeps rank 0's checksum results for pruning later."""
    decision: dict[str, Any] = {"path": None, "resume": False, "none_usable": False,
                                "error": "", "warnings": []}
    if dist.get_rank() == 0 if dist.is_initialized() else True:
        warnings: list[str] = decision["warnings"]
        try:
            own = None
            if cfg.checkpoint.resume:
                own = find_latest_valid(cfg.checkpoint_dir, warnings.append, verdicts)
                decision["none_usable"] = own is None and bool(
                    list_checkpoints(cfg.checkpoint_dir))
            if own is not None:
                decision.update(path=str(own), resume=True)
            elif cfg.checkpoint.load:
                decision["path"] = str(_resolve_load(Path(cfg.checkpoint.load),
                                                     warnings.append))
        except CheckpointError as err:
            decision["error"] = str(err)
    decided = json.loads(_broadcast_str(json.dumps(decision)))
    for message in decided["warnings"]:
        warn(message)
    if decided["error"]:
        raise CheckpointError(decided["error"])
    return StartPoint(Path(decided["path"]) if decided["path"] else None, decided["resume"],
                      decided["none_usable"])


def _resolve_load(path: Path, warn: Callable[[str], None]) -> Path:
    """`checkpoint.load` may name one step directory, a checkpoints directory or a run
    directory (as `convert` and `generate` take them)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint.load={path} does not exist; give a run directory, "
                              f"its checkpoints directory or one step_N directory")
    if is_complete(path):
        verify_checksums(path)
        return path
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    found = find_latest_valid(path, warn)
    if found is None:
        raise CheckpointError(f"checkpoint.load={path} holds no usable checkpoint (no "
                              f"step_N directory with a COMPLETE marker and good checksums)")
    return found


def restore(cfg: Config, ckpt: Path, resume: bool, models: list, engine: TrainingEngine,
            tokenizer_fingerprint: str) -> Restored:
    """Load `ckpt` into the run after checking it was trained on the same vocabulary."""
    saved = read_trainer_state(ckpt).get("tokenizer", {}).get("fingerprint")
    if saved and saved != tokenizer_fingerprint:
        raise CheckpointError(
            f"{ckpt} was trained with tokenizer {saved[:12]}…, this run uses "
            f"{tokenizer_fingerprint[:12]}…; use the same data.tokenizer (or start fresh)")
    check_same_model(cfg, ckpt, resume)
    weights_only = cfg.checkpoint.load_weights_only and not resume
    return load_checkpoint(ckpt, cfg, models, engine, weights_only=weights_only)


def check_same_model(cfg: Config, ckpt: Path, resume: bool) -> None:
    """Refuse, in one line naming the keys, a checkpoint whose weights have other shapes than
    this run's model (found before megatron's loader fails with a page of shape errors)."""
    try:
        saved = weight_shape(load_config(ckpt / "config.yaml"))
    except (ConfigError, OSError):
        return  # no readable config: the loader's own check decides
    ours = weight_shape(cfg)
    differ = [key for key in ours if key in saved and saved[key] != ours[key]]
    if not differ:
        return
    what = "; ".join(f"{key} is {saved[key]} there, {ours[key]} here" for key in differ)
    fix = f"use the checkpoint's values ({' '.join(f'{k}={saved[k]}' for k in differ)})"
    if resume:
        fix += " to resume it, or start another run (a new run.dir, or checkpoint.resume=false)"
    raise CheckpointError(f"{ckpt} holds another model: {what}; {fix}")


def schedule_changes(cfg: Config, ckpt: Path, step: int) -> str:
    """"" when this run's learning-rate schedule is the checkpoint's, else one line naming
    the keys that differ and what the rate of the next step becomes under each."""
    from nextlat_pt.train.optim import lr_at

    try:
        saved = load_config(ckpt / "config.yaml").train
    except (ConfigError, OSError):
        return ""
    ours = cfg.train
    keys = ["max_steps", "lr", "min_lr", "lr_schedule", "warmup_steps"]
    if "wsd" in (saved.lr_schedule, ours.lr_schedule):
        keys.append("decay_steps")
    differ = [k for k in keys if getattr(saved, k) != getattr(ours, k)]
    if not differ:
        return ""
    changes = ", ".join(f"train.{k} {getattr(saved, k)} -> {getattr(ours, k)}" for k in differ)
    return (f"the learning-rate schedule differs from {ckpt.name}'s ({changes}): step "
            f"{step + 1} trains at lr {lr_at(step + 1, ours):.3g}, where the checkpoint's "
            f"schedule gives {lr_at(step + 1, saved):.3g}")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after `step` (by a run killed after its last checkpoint), so the
    resumed run's metrics.jsonl reads as if it had never stopped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
