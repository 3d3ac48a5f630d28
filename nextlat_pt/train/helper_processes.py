"""Helper processes live and die with the trainer that started them.

The trainer starts helpers only through megatron's dist_checkpointing:
- a multiprocessing Manager (spawned at the first save) that serves the queue its file
  writers report to, and with it multiprocessing's resource tracker;
- forked writers at every save (two file writers; with async saves also the writer proxy
  and the process that writes the optimizer and RNG files).

Left alone, a trainer killed with SIGKILL (the OOM killer, `kill -9`, a node agent) orphans
them: the Manager serves forever, and a writer forked while the trainer deferred SIGTERM and
SIGUSR1 (`checkpoint.signals_deferred`) keeps them blocked, so a plain `kill` does not end
it either. `install()` makes each helper

- ask the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`; if the parent is
  already gone by then, it exits at once);
- ignore SIGINT, SIGTERM and SIGUSR1 with nothing blocked: those are stop requests for the
  trainer, which saves at the next step boundary and needs its writers to finish that save
  (a job-wide signal from scancel or Ctrl-C reaches every process of the job).

The resource tracker needs nothing: it exits when the last process holding its pipe does.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

_installed_in: int | None = None  # the pid that installed the hooks (forks inherit the flag)
_forking_parent = 0


def _set_parent_death_signal(sig: int) -> bool:
    """PR_SET_PDEATHSIG for this process; False where prctl does not exist (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int) -> None:
    """In a helper process: SIGKILL when `parent_pid` (its parent) dies, stop signals ignored.

    Linux delivers the parent-death signal when the thread that created the process exits;
    the trainer creates its helpers from its main thread, which lives as long as it does.
    """
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    for sig in STOP_SIGNALS:  # ignored first, then unblocked: pending ones are discarded
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _before_fork() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent(_forking_parent)


def _start_results_queue() -> None:
    """Create dist_checkpointing's write-results queue ourselves, so that the Manager
    process serving it runs `die_with_parent` first (megatron would start a plain one at the
    first save)."""
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:
        return
    if getattr(filesystem_async, "_results_queue", "absent") is not None:
        return  # already created, or a megatron version without this global
    import multiprocessing
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=die_with_parent, initargs=(os.getpid(),))
    filesystem_async._results_queue = manager.Queue()
    filesystem_async._nextlat_pt_manager = manager  # keep it referenced while the queue is


def install(results_queue: bool = True) -> None:
    """Before a checkpoint is saved (`results_queue`: start the writers' Manager too) or
    loaded: every process forked from here on, and the Manager, die with their parent.
    Idempotent."""
    global _installed_in
    if _installed_in != os.getpid():
        if _installed_in is None:  # a fork inherits the registered hooks; register once
            os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _installed_in = os.getpid()
    if results_queue:
        _start_results_queue()
