"""A trainer killed with SIGKILL leaves no process behind: the checkpoint Manager, the
resource tracker and forked writers die with it (during a save and after one). The writers
do not inherit the trainer's blocked SIGTERM/SIGUSR1.

Every process of a launch carries a marker in its environment, so the test finds them after
they have been re-parented, wherever they are."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest
from cli_runner import start_cli

MARK = "NEXTLAT_PT_TEST_LAUNCH"
ARGS = ["train", "train.max_steps=400", "logging.interval=1", "logging.wandb=disabled",
        "logging.plot=false", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
        "model.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4",
        "train.eval_batches=1", "checkpoint.interval=4"]
STOP_MASK = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGUSR1 - 1))


def _marked(launch: str) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries this launch's marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK) == launch:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _blocked_signals(proc: psutil.Process) -> int:
    """The process's blocked-signal mask (0 once it has exited)."""
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    return 0


def _wait_for(predicate, timeout: float, what: str, proc) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("moment", ["after_a_save", "during_an_async_save"])
def test_sigkilled_trainer_leaves_no_process(tmp_path, corpus_cache, moment):
    launch = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    args = [*ARGS, f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}"]
    env = {MARK: launch}
    if moment == "during_an_async_save":
        args.append("checkpoint.async_save=true")
        env["NEXTLAT_PT_TEST_WRITE_DELAY"] = "60"  # the optimizer/RNG writer sleeps first
    trainer = start_cli(args, log=tmp_path / "run.log", extra_env=env)
    try:
        if moment == "after_a_save":
            _wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), 300,
                      "the first checkpoint", trainer)
        else:
            _wait_for(lambda: (run_dir / "checkpoints" / "step_0000004.tmp").exists()
                      and len(_marked(launch)) >= 4, 300, "the async writers", trainer)
        helpers = [p for p in _marked(launch) if p.pid != trainer.pid]
        # The control: there are helpers to leak (the Manager and the resource tracker,
        # plus forked writers during the async save), and none blocks the stop signals once
        # its after-fork hook has run (a child forked a moment ago may not have yet).
        assert len(helpers) >= (2 if moment == "after_a_save" else 3), helpers
        deadline = time.monotonic() + 10
        while True:
            blocked = [h for h in helpers if _blocked_signals(h) & STOP_MASK]
            if not blocked or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not blocked, [h.cmdline() for h in blocked]
        trainer.send_signal(signal.SIGKILL)  # the trainer alone, as the OOM killer does
        trainer.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _marked(launch) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [(p.pid, " ".join(p.cmdline())[:120]) for p in _marked(launch)]
        assert not left, f"processes left after the trainer was killed: {left}"
    finally:
        for proc in _marked(launch):
            proc.kill()
