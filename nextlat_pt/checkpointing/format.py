"""One directory per step, complete only once its marker exists.

    <checkpoint.dir>/step_0000150/
        model/                       megatron dist_checkpointing (reshardable across TP/PP)
        optim/rank_00000.pt          each rank's share of the optimizer state, under global
                                     parameter names and boxes (format 2; any layout loads it)
        optim/index.json             which file holds which box of which parameter
        rng/rank_00000.pt            each rank's torch and megatron-tracker RNG states
        trainer_state.json           step, consumed samples, layout, tokenizer, data (absolute
                                     paths), wandb id, format_version
        config.yaml                  the resolved run config
        tokenizer.model              a copy of the run's tokenizer (the checkpoint stands alone)
        COMPLETE                     written last: the sha256 of every other file
    <checkpoint.dir>/latest          the name of the newest complete checkpoint (atomic)

Format 1 (before layout-independent optimizer state) wrote DeepSpeed's own partitions as
`optim/tp00_pp00_dp000.pt`, usable only by the same layout.

Everything is written under `step_N.tmp/` and renamed when complete, so a crash mid-save
never leaves a directory that looks like a checkpoint, and `latest` only ever names complete
ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from nextlat_pt.checkpointing.errors import CheckpointError

MARKER = "COMPLETE"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_TOKENIZER = "tokenizer.model"  # a copy of the run's tokenizer, in every checkpoint
# 1: optimizer state as DeepSpeed's partitions (same layout only);
# 2: layout-independent optimizer state (optimizer_state.py)
FORMAT_VERSION = 2


def step_dir_name(step: int) -> str:
    """`step_0000150` for step 150."""
    return f"step_{step:07d}"


def step_of(ckpt: Path) -> int | None:
    """The step a `step_N` (or `step_N.tmp`) directory name holds, None for other names."""
    digits = ckpt.name.removeprefix("step_").removesuffix(".tmp")
    return int(digits) if ckpt.name.startswith("step_") and digits.isdigit() else None


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_marker(tmp: Path, step: int) -> None:
    """The marker, written last: the sha256 and total size of every other file."""
    checksums = {str(p.relative_to(tmp)): sha256_file(p)
                 for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MARKER}
    sizes = sum((tmp / rel).stat().st_size for rel in checksums)
    marker = {"step": step, "bytes": sizes, "sha256": checksums}
    marker_tmp = tmp / (MARKER + ".tmp")
    marker_tmp.write_text(json.dumps(marker, indent=2))
    os.replace(marker_tmp, tmp / MARKER)


def finalize(tmp: Path, final: Path, step: int) -> None:
    """Marker last (with checksums), then the rename, then `latest`: each step atomic."""
    write_marker(tmp, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = final.parent / (LATEST + ".tmp")
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, final.parent / LATEST)


def is_complete(ckpt: Path) -> bool:
    """A checkpoint counts only with its marker (checksums are verified on load)."""
    return (ckpt / MARKER).is_file() and not ckpt.name.endswith(".tmp")


def verify_checksums(ckpt: Path) -> None:
    """Raise CheckpointError naming the first file whose sha256 differs from the marker's."""
    try:
        record = json.loads((ckpt / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt}: unreadable {MARKER} marker ({err})") from err
    for rel, expected in record["sha256"].items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {rel} is missing")
        if sha256_file(path) != expected:
            raise CheckpointError(f"checkpoint {ckpt}: {rel} fails its checksum")


def list_checkpoints(root: Path) -> list[Path]:
    """Every step directory under `root` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def read_latest(root: Path) -> str:
    """The directory name `latest` holds ("" when there is none or it is unreadable)."""
    try:
        return (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json (step, data position, layout, tokenizer, ...)."""
    return json.loads((ckpt / TRAINER_STATE).read_text())


def format_version(state: dict[str, Any]) -> int:
    """The format a checkpoint was written in (1 when its trainer state does not say)."""
    return int(state.get("format_version") or 1)


def has_portable_optimizer(state: dict[str, Any]) -> bool:
    """Whether the optimizer state loads into any layout (format 2 with an optimizer)."""
    return format_version(state) >= 2 and bool(state.get("optimizer_state"))
