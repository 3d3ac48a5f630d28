"""Run the real CLI in a subprocess (single process or torchrun) and read its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cli_command(args: list[str], nproc: int = 1,
                extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment for `nextlat-pt ...` on `nproc` local processes."""
    env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else "2", **(extra_env or {}))
    env.pop("WANDB_MODE", None)  # the run's own logging.wandb setting decides
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "nextlat_pt", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", "-m", "nextlat_pt", *args]
    return cmd, env


def start_cli(args: list[str], nproc: int = 1, log: Path | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the CLI in its own process group (so a test can SIGKILL all its ranks)."""
    cmd, env = cli_command(args, nproc, extra_env)
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_cli(args: list[str], nproc: int = 1, timeout: int = 420, cwd: Path | None = None,
            expect_code: int = 0,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`nextlat-pt ...` (or `torchrun --nproc_per_node=N -m nextlat_pt ...`); fail with logs."""
    cmd, env = cli_command(args, nproc, extra_env)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != expect_code:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-5000:]}"
            f"\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc


def read_jsonl(path: Path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
