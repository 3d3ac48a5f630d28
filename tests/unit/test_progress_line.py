"""The progress line: speed over the steps since the previous line, MFU when the peak is
known, elapsed time and ETA."""

from __future__ import annotations

import io

from nextlat_pt.flops import peak_tflops
from nextlat_pt.train import callbacks
from nextlat_pt.train.callbacks import ConsoleProgress


def _metrics(step: int, tokens_per_step: int = 1000) -> dict:
    return {"step": step, "loss": 2.0, "ce": 1.5, "lr": 1e-3, "grad_norm": 0.5,
            "tokens": step * tokens_per_step, "tokens_per_s": 1.0}


def test_speed_mfu_elapsed_and_eta(monkeypatch):
    clock = iter([100.0, 100.0, 110.0])  # construction, train start, the log at step 20
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = ConsoleProgress(120, stream=out, start_step=10, start_tokens=10_000,
                               flops_per_token=3e9, peak_flops=1e15)
    progress.on_train_start({})
    progress.on_log(_metrics(20))  # 10 steps in 10 s since the resume at step 10
    line = out.getvalue().strip()
    assert "| 1,000 ms/step |" in line and "| 1,000 tok/s |" in line
    assert "| MFU 0.3% |" in line  # 3e9 FLOP/token × 1000 tok/s over 1e15 FLOP/s
    assert line.endswith("| elapsed 0:00:10 | ETA 0:01:40")  # 100 steps left at 1 s each


def test_no_mfu_without_a_known_peak():
    out = io.StringIO()
    progress = ConsoleProgress(5, stream=out, flops_per_token=3e9, peak_flops=None)
    progress.on_train_start({})
    progress.on_log(_metrics(5))
    assert "MFU" not in out.getvalue() and "ETA" not in out.getvalue()  # the last step
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("cpu") is None
