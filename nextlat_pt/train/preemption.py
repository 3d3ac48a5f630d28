"""Stop cleanly when the cluster asks: signals and a wall-clock budget, decided collectively.

SIGTERM and SIGUSR1 (Slurm's `--signal=B:USR1@...`, forwarded by the sbatch script) only set
a flag. At each step boundary the flags are MAX-reduced over all ranks, so if any rank got a
signal, or the run is past `train.exit_duration_mins`, every rank saves the same checkpoint
and the process exits with PREEMPTED_EXIT_CODE. The launcher treats that code as "requeue me";
relaunching the same command resumes from the checkpoint.
"""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: saved, resumable; requeue the job
PREEMPTED_MARKER = "PREEMPTED"  # in the run dir while the newest stop was a preemption
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatcher:
    """Collects stop requests; `should_stop()` is a collective to call at step boundaries."""

    def __init__(self, exit_duration_mins: float = 0.0) -> None:
        self.started = time.monotonic()
        self.budget_s = exit_duration_mins * 60.0
        self.received: int | None = None
        self.reason = ""
        self._previous = {}
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def should_stop(self, device: torch.device) -> bool:
        """True on every rank when any rank was signalled or the time budget is spent."""
        local = 0.0
        if self.received is not None:
            local = 2.0
        elif self.budget_s and time.monotonic() - self.started >= self.budget_s:
            local = 1.0
        flag = torch.tensor([local], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() >= 2.0:
            self.reason = "a preemption signal (SIGTERM/SIGUSR1)"
        elif flag.item() >= 1.0:
            self.reason = f"the time budget train.exit_duration_mins={self.budget_s / 60:g}"
        return flag.item() > 0

    def restore(self) -> None:
        """Put back the previous signal handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
