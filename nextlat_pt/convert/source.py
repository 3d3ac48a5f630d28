"""Find and check the nextlat_pt checkpoint an export or evaluation starts from.

Accepts a step directory (…/checkpoints/step_N), a checkpoints directory or a run directory
(the newest complete checkpoint is taken), and refuses anything incomplete or corrupt with
one line that says what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.checkpointing.format import (
    CHECKPOINT_TOKENIZER,
    MARKER,
    is_complete,
    list_checkpoints,
    verify_checksums,
)
from nextlat_pt.config import Config, ConfigError, load_config
from nextlat_pt.convert.errors import ConvertError


@dataclass
class NextLatCheckpoint:
    """A complete, verified checkpoint with its config and trainer state."""

    path: Path
    config: Config
    state: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary (the embedding is padded beyond it)."""
        return int(self.state["tokenizer"]["vocab_size"])

    @property
    def layout(self) -> dict[str, Any]:
        """The parallel layout it was saved with (as recorded; may be a marker dict)."""
        return self.state.get("layout") or {}

    def recorded_path(self, recorded: str | None) -> Path | None:
        """A path the trainer recorded, if it still exists. Checkpoints record absolute
        paths; older ones recorded them relative to where training ran, which is found
        from where the checkpoint sits when its directory was given relative too
        (`<there>/<checkpoint dir>/step_N`). The current directory is tried as well."""
        if not recorded:
            return None
        path = Path(recorded)
        candidates = [path]
        if not path.is_absolute():
            training_cwd = _training_cwd(self.path.resolve().parent, self.config.checkpoint_dir)
            if training_cwd is not None:
                candidates.insert(0, training_cwd / path)
        return next((p for p in candidates if p.exists()), None)

    def tokenizer_file(self) -> Path | None:
        """The sentencepiece model: the copy in the checkpoint, else the recorded one."""
        copy = self.path / CHECKPOINT_TOKENIZER
        if copy.is_file():
            return copy
        found = self.recorded_path(self.state["tokenizer"].get("path"))
        return found if found is not None and found.is_file() else None


def _training_cwd(checkpoints: Path, recorded_dir: Path) -> Path | None:
    """The directory training ran in, if `recorded_dir` (relative) ends `checkpoints`."""
    if recorded_dir.is_absolute() or not recorded_dir.parts:
        return None
    parts = checkpoints.parts
    tail = recorded_dir.parts
    if len(parts) <= len(tail) or parts[-len(tail):] != tail:
        return None
    return Path(*parts[:-len(tail)])


def is_nextlat_checkpoint_dir(path: Path) -> bool:
    """Whether `path` looks like one of our checkpoints (a step, checkpoints or run dir)."""
    path = Path(path)
    return ((path / "trainer_state.json").is_file() or (path / MARKER).is_file()
            or (path / "checkpoints").is_dir() or bool(list_checkpoints(path)))


def _pick_step(path: Path) -> Path:
    """A step directory from a step, checkpoints or run directory."""
    if (path / "trainer_state.json").is_file() or (path / MARKER).is_file() \
            or path.name.startswith("step_"):
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    candidates = [p for p in list_checkpoints(root) if is_complete(p)]
    if not candidates:
        found = list_checkpoints(root)
        hint = (f"; {len(found)} step director{'y is' if len(found) == 1 else 'ies are'} "
                f"incomplete (no {MARKER} marker)" if found else "")
        raise ConvertError(f"{path} holds no complete checkpoint{hint}; give a step directory "
                           f"(…/checkpoints/step_N), a checkpoints directory or a run directory")
    return candidates[-1]


def open_checkpoint(path: str | Path, verify: bool = True) -> NextLatCheckpoint:
    """The checkpoint at `path` (see module doc), its marker and checksums verified."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if not path.is_dir():
        raise ConvertError(f"{path} is not a directory; give a checkpoint directory")
    step = _pick_step(path)
    if step.name.endswith(".tmp"):
        raise ConvertError(f"{step} is an interrupted save (a .tmp directory); use a "
                           f"complete checkpoint")
    if not is_complete(step):
        raise ConvertError(f"{step} is not a complete checkpoint (no {MARKER} marker: the "
                           f"save did not finish); use another step")
    if verify:
        try:
            verify_checksums(step)
        except CheckpointError as err:
            raise ConvertError(str(err)) from err
    for name in ("trainer_state.json", "config.yaml", "model"):
        if not (step / name).exists():
            raise ConvertError(f"{step} has no {name}; it is not a nextlat_pt checkpoint")
    try:
        state = json.loads((step / "trainer_state.json").read_text())
    except json.JSONDecodeError as err:
        raise ConvertError(f"{step}/trainer_state.json is not valid JSON ({err})") from err
    if not isinstance(state.get("tokenizer"), dict) or "vocab_size" not in state["tokenizer"]:
        raise ConvertError(f"{step}/trainer_state.json records no tokenizer vocab_size; it "
                           f"was not written by nextlat_pt")
    try:
        config = load_config(step / "config.yaml")
    except ConfigError as err:
        raise ConvertError(f"{step}/config.yaml: {err}") from err
    return NextLatCheckpoint(path=step, config=config, state=state)
