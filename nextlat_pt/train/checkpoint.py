"""Checkpoints: one directory per step, complete only once its marker exists.

    <checkpoint.dir>/step_0000150/
        model/             megatron dist_checkpointing (reshardable across TP/PP)
        deepspeed/         the DeepSpeed engine's (ZeRO-partitioned) optimizer state
        trainer_state.json step, consumed samples, layout, tokenizer fingerprint
        config.yaml        the resolved run config
        COMPLETE           written last, with the sha256 of every other file
    <checkpoint.dir>/latest   the name of the newest complete checkpoint (switched atomically)

Everything is first written under `step_N.tmp/` and renamed when complete, so a crash
mid-save never leaves a directory that looks like a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from nextlat_pt.config import Config, save_config

MARKER = "COMPLETE"
LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def model_sharded_state_dict(models: list[torch.nn.Module]) -> dict:
    """One chunk: its sharded state dict; virtual pipeline chunks: one entry per chunk.

    The tensors' keys are global (layer numbers include the stage offset), so any layout can
    load what any other layout saved."""
    if len(models) == 1:
        return models[0].sharded_state_dict()
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(models)}


def save_checkpoint(cfg: Config, models: list[torch.nn.Module], engine: Any, step: int,
                    trainer_state: dict[str, Any]) -> Path:
    """Save model, optimizer and trainer state for `step` on every rank; returns the dir."""
    root = cfg.checkpoint_dir
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of an interrupted save
        (tmp / "model").mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(model_sharded_state_dict(models), str(tmp / "model"))
    engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
    _barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        save_config(cfg, tmp / "config.yaml")
        checksums = {
            str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / MARKER).write_text(json.dumps({"step": step, "sha256": checksums}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = root / (LATEST + ".tmp")
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, root / LATEST)
    _barrier()
    return final


def is_complete(ckpt: Path) -> bool:
    """A checkpoint counts only with its marker (checksums are verified on load)."""
    return (ckpt / MARKER).is_file()


def verify_checksums(ckpt: Path) -> None:
    """Raise ValueError naming the first file whose sha256 differs from the marker's record."""
    record = json.loads((ckpt / MARKER).read_text())
    for rel, expected in record["sha256"].items():
        path = ckpt / rel
        if not path.is_file():
            raise ValueError(f"checkpoint {ckpt}: {rel} is missing")
        if _sha256(path) != expected:
            raise ValueError(f"checkpoint {ckpt}: {rel} fails its checksum")


def load_model_weights(models: list[torch.nn.Module], ckpt: Path) -> None:
    """Load weights saved with any TP/PP layout into `models` (this process's layout)."""
    if not is_complete(ckpt):
        raise ValueError(
            f"{ckpt} is not a complete checkpoint (no {MARKER} marker); pick another step"
        )
    state = dist_checkpointing.load(model_sharded_state_dict(models), str(ckpt / "model"))
    per_model = [state] if len(models) == 1 else [state[f"model{i}"] for i in range(len(models))]
    for model, model_state in zip(models, per_model):
        missing, unexpected = model.load_state_dict(model_state, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise ValueError(f"{ckpt}: missing keys {missing}, unexpected keys {unexpected}")
