"""Output folders that appear only when complete: written under a temporary sibling name,
renamed into place at the end (an interrupted conversion leaves no half-written folder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nextlat_pt.convert.errors import ConvertError


def prepare_out_dir(out_dir: Path, force: bool) -> Path:
    """A fresh temporary directory beside `out_dir` (renamed into place at the end)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ConvertError(f"{out_dir} exists and is not empty; choose another directory or "
                           f"pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))


def finish_out_dir(tmp: Path, out_dir: Path) -> None:
    """Move the completed folder into place (replacing an old one only now)."""
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; so do some writers for their files
    for path in tmp.iterdir():
        path.chmod(0o644)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
