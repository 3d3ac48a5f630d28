"""Run the real CLI in a subprocess (single process or torchrun) and read its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(args: list[str], nproc: int = 1, timeout: int = 420,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`nextlat-pt ...` (or `torchrun --nproc_per_node=N -m nextlat_pt ...`); fail with logs."""
    env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else "2")
    env.pop("WANDB_MODE", None)  # the run's own logging.wandb setting decides
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "nextlat_pt", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", "-m", "nextlat_pt", *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-5000:]}"
            f"\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc


def read_jsonl(path: Path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
