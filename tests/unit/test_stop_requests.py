"""Stop requests: Ctrl-C asks for a save (exit 130), a second one a while later stops at
once; the copy of the same Ctrl-C that torchrun forwards milliseconds later is not a second
one."""

from __future__ import annotations

import signal

import pytest
import torch

from nextlat_pt.train import preemption
from nextlat_pt.train.preemption import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE


@pytest.fixture
def watcher():
    w = preemption.PreemptionWatcher()
    yield w
    w.restore()


def test_ctrl_c_asks_for_a_save_with_exit_code_130(watcher):
    watcher._handle(signal.SIGINT, None)
    assert watcher.should_stop(torch.device("cpu"))
    assert watcher.exit_code == INTERRUPTED_EXIT_CODE == 130 and not watcher.preempted
    watcher._handle(signal.SIGTERM, None)  # a preemption on top: requeue wins
    assert watcher.should_stop(torch.device("cpu")) and watcher.exit_code == PREEMPTED_EXIT_CODE


def test_a_second_ctrl_c_stops_at_once_but_not_torchruns_forwarded_copy(watcher, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    watcher._handle(signal.SIGINT, None)
    now[0] += 0.01
    watcher._handle(signal.SIGINT, None)  # torchrun's copy of the same Ctrl-C
    now[0] += 2.0
    with pytest.raises(KeyboardInterrupt):
        watcher._handle(signal.SIGINT, None)
    watcher.saved = True  # once the stop checkpoint is on disk there is nothing to abort
    watcher._handle(signal.SIGINT, None)
