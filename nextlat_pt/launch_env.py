"""What the launcher (torchrun, srun, or none) tells this process, read without importing
torch, and how a user error is reported once for a whole launch."""

from __future__ import annotations

import os
import signal
import sys
import time

INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT  # 130, the shell's code for Ctrl-C

# How long a rank other than 0 waits before printing an error: long enough for a launcher
# that saw rank 0 fail to stop it (torchrun checks its workers every 0.1 s by default).
REPORT_GRACE_S = 5.0


def world_from_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's or Slurm's environment, else (1, 0, 0)."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return (
            int(os.environ["WORLD_SIZE"]),
            int(os.environ["RANK"]),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ:
        return (
            int(os.environ["SLURM_NTASKS"]),
            int(os.environ["SLURM_PROCID"]),
            int(os.environ.get("SLURM_LOCALID", 0)),
        )
    return 1, 0, 0


def report_error(line: str) -> None:
    """Print a user error (one line, one write: ranks never interleave) once per launch.

    Every rank usually hits the same error (the same config, the same files). Rank 0 prints
    it at once. The others wait first: a launcher that saw rank 0 fail stops them in the
    meantime (torchrun does), so the line appears once; an error that only they hit (a path
    missing on one node) is still printed after the wait.
    """
    world_size, rank, _ = world_from_env()
    if world_size > 1 and rank != 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher's stop ends the wait
        time.sleep(REPORT_GRACE_S)
    sys.stdout.flush()
    sys.stderr.write(line.rstrip("\n") + "\n")
    sys.stderr.flush()
