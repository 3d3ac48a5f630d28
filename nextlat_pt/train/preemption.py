"""Stop cleanly when the cluster or the user asks: signals and a wall-clock budget, decided
collectively.

SIGTERM and SIGUSR1 (Slurm's `--signal=B:USR1@...`, forwarded by the sbatch script) and
SIGINT (Ctrl-C) only set a flag. At each step boundary the flags are MAX-reduced over all
ranks, so if any rank got a signal, or the run is past `train.exit_duration_mins`, every rank
saves the same checkpoint and the process exits: PREEMPTED_EXIT_CODE (75) for the cluster's
stop requests and the time budget (the launcher requeues), INTERRUPTED_EXIT_CODE (130, the
shell's code for Ctrl-C) for an interrupt. Relaunching the same command resumes from the
checkpoint. A second Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

from nextlat_pt.launch_env import INTERRUPTED_EXIT_CODE  # 130: saved, resumable; user stop

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: saved, resumable; requeue the job
PREEMPTED_MARKER = "PREEMPTED"  # in the run dir while the newest stop was a preemption
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

# A Ctrl-C under torchrun reaches a rank twice within milliseconds (from the terminal, and
# forwarded by torchrun): only one at least this much later is the user's second Ctrl-C.
SECOND_INTERRUPT_AFTER_S = 1.0

# The collective flag: the highest request on any rank wins.
_BUDGET, _INTERRUPT, _PREEMPT = 1.0, 2.0, 3.0


class PreemptionWatcher:
    """Collects stop requests; `should_stop()` is a collective to call at step boundaries."""

    def __init__(self, exit_duration_mins: float = 0.0) -> None:
        self.started = time.monotonic()
        self.budget_s = exit_duration_mins * 60.0
        self.received: set[int] = set()
        self.reason = ""
        self.exit_code = PREEMPTED_EXIT_CODE
        self.saved = False  # set once the last checkpoint is on disk: nothing left to abort
        self._first_interrupt: float | None = None
        self._previous = {}
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt is None:
                self._first_interrupt = now
            elif now - self._first_interrupt >= SECOND_INTERRUPT_AFTER_S and not self.saved:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        self.received.add(signum)

    def should_stop(self, device: torch.device) -> bool:
        """True on every rank when any rank was signalled or the time budget is spent."""
        local = 0.0
        if self.received - {signal.SIGINT}:
            local = _PREEMPT
        elif self.received:
            local = _INTERRUPT
        elif self.budget_s and time.monotonic() - self.started >= self.budget_s:
            local = _BUDGET
        flag = torch.tensor([local], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        value = flag.item()
        self.exit_code = INTERRUPTED_EXIT_CODE if value == _INTERRUPT else PREEMPTED_EXIT_CODE
        if value >= _PREEMPT:
            self.reason = "a preemption signal (SIGTERM/SIGUSR1)"
        elif value >= _INTERRUPT:
            self.reason = "an interrupt (Ctrl-C)"
        elif value >= _BUDGET:
            self.reason = f"the time budget train.exit_duration_mins={self.budget_s / 60:g}"
        return value > 0

    @property
    def preempted(self) -> bool:
        """Whether the stop is one a launcher should requeue (not a user's interrupt)."""
        return self.exit_code == PREEMPTED_EXIT_CODE

    def restore(self) -> None:
        """Put back the previous signal handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
