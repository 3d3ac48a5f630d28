"""Run a worker script under torchrun with gloo-friendly settings and a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 240,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Launch `script args...` on `nproc` local processes; raise with the log on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(script.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
           str(script), *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun {script.name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-8000:]}"
        )
    return proc
