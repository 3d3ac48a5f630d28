"""Which checkpoints are usable, and which pruning may delete.

Hashing a 1B-class checkpoint reads tens of GB: `Verdicts` hashes each directory at most
once per run; `Retention` decides on rank 0 what `checkpoint.keep` deletes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.checkpointing.format import (
    LATEST,
    MARKER,
    is_complete,
    list_checkpoints,
    read_latest,
    step_of,
    verify_checksums,
)


class Verdicts:
    """Whether each checkpoint passed its checksums, remembered for this process.

    Hashing a 1B-class checkpoint reads tens of GB, so each directory is hashed at most once
    per run: the verdict is kept under the marker's identity (inode, size, mtime), which
    changes when a step is rewritten. Checkpoints this run wrote are good by construction
    (their checksums were just computed from the files on disk)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int], str]] = {}

    @staticmethod
    def _identity(ckpt: Path) -> tuple[int, int, int] | None:
        try:
            st = (ckpt / MARKER).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def record(self, ckpt: Path, problem: str) -> None:
        """Remember the verdict for `ckpt` ("" = good, else what is wrong)."""
        identity = self._identity(ckpt)
        if identity is not None:
            self._known[str(ckpt.resolve())] = (identity, problem)

    def problem(self, ckpt: Path) -> str:
        """"" if `ckpt` is a complete checkpoint that passes its checksums, else the reason
        (hashing it only if this process has no verdict for it yet)."""
        if ckpt.name.endswith(".tmp"):
            return f"skipping {ckpt}: an interrupted save (no rename)"
        if not is_complete(ckpt):
            return f"skipping {ckpt}: no {MARKER} marker (the save did not finish)"
        known = self._known.get(str(ckpt.resolve()))
        if known is not None and known[0] == self._identity(ckpt):
            return known[1]
        try:
            verify_checksums(ckpt)
            problem = ""
        except CheckpointError as err:
            problem = f"skipping {err}"
        self.record(ckpt, problem)
        return problem


class Retention:
    """Which checkpoints pruning may delete (`checkpoint.keep`), decided on rank 0.

    - Only checkpoints that pass verification (marker and checksums) count toward `keep`:
      corrupt ones never push a good one out.
    - Never deleted: the checkpoint just written, anything with a higher step, the one
      `latest` names, and `protected` (what was on disk, newer than the step this run started
      from, when it started: a run that skipped broken checkpoints leaves them for a human).
    - Checksums are verified only for checkpoints pruning is about to rely on (newest first,
      until `keep` good ones are found), and at most once per run (`Verdicts`).
    """

    def __init__(self, root: Path, keep: int, verdicts: Verdicts | None = None) -> None:
        self.root = root
        self.keep = keep
        self.verdicts = verdicts or Verdicts()
        self.protected: set[str] = set()

    def protect_newer_than(self, step: int) -> None:
        """Protect every checkpoint on disk now whose step is above `step` (not interrupted
        saves: a `.tmp` directory can never be used)."""
        self.protected |= {p.name for p in list_checkpoints(self.root)
                           if (step_of(p) or 0) > step and not p.name.endswith(".tmp")}

    def after_save(self, written: Path) -> list[Path]:
        """Record `written` as good (this run wrote it) and prune; returns what was deleted."""
        self.verdicts.record(written, "")
        self.protected.discard(written.name)
        return self.prune(written)

    def prune(self, newest: Path | None = None) -> list[Path]:
        """Delete checkpoints beyond the newest `keep` good ones (see the class doc)."""
        if self.keep <= 0:
            return []
        ceiling = step_of(newest) if newest is not None else None
        latest = read_latest(self.root)
        spared = set(self.protected) | {latest} | ({newest.name} if newest else set())
        good = 0
        deleted = []
        for ckpt in reversed(list_checkpoints(self.root)):  # newest step first
            step = step_of(ckpt)
            if step is None or (ceiling is not None and step > ceiling):
                continue
            if good < self.keep:
                # Still filling `keep`: only a verified checkpoint counts; others are left.
                if not ckpt.name.endswith(".tmp") and not self.verdicts.problem(ckpt):
                    good += 1
                continue
            if ckpt.name in spared:
                continue
            shutil.rmtree(ckpt, ignore_errors=True)  # older than `keep` good checkpoints
            deleted.append(ckpt)
        return deleted


def prune(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` verified checkpoints under `root` (0 keeps all); see
    `Retention` for what is never deleted. Returns the deleted directories."""
    return Retention(root, keep).prune()


def find_latest_valid(root: Path, warn: Callable[[str], None],
                      verdicts: Verdicts | None = None) -> Path | None:
    """The newest checkpoint that is complete and passes its checksums; warns about each
    newer one that is skipped, naming it, and about a `latest` that names anything else."""
    verdicts = verdicts or Verdicts()
    found = None
    for ckpt in reversed(list_checkpoints(root)):
        problem = verdicts.problem(ckpt)
        if not problem:
            found = ckpt
            break
        warn(problem)
    latest = read_latest(root)
    if (root / LATEST).exists() and (found is None or latest != found.name):
        # A corrupt `latest` target was already named above; report only a garbage or
        # dangling pointer, which nothing else would mention.
        if not latest or step_of(root / latest) is None:
            warn(f"{root / LATEST} holds {latest[:40]!r}, not a checkpoint name; ignoring it")
        elif not (root / latest).is_dir():
            warn(f"{root / LATEST} names {latest}, which does not exist; ignoring it")
    return found
