"""`nextlat-pt sweep` end to end on this machine: a run interrupted before the sweep resumes
from its checkpoint, the other starts fresh, a second launch skips both, and the report
covers the grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nextlat_pt.sweep.plan import DONE_MARKER, read_plan
from nextlat_pt.sweep.runner import train_command

TINY = ["logging.interval=1", "logging.wandb=disabled", "logging.plot=false",
        "model.num_layers=1", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
        "train.micro_batch_size=2", "train.global_batch_size=4", "train.eval_batches=1",
        "train.warmup_steps=1", "checkpoint.interval=2", "train.max_steps=4"]


def _sweep(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextlat_pt", "sweep", *args],
                          capture_output=True, text=True, timeout=900)


def test_a_sweep_resumes_the_interrupted_run_and_skips_finished_ones(tmp_path, corpus_cache):
    out = tmp_path / "sweep"
    common = ["--grid", "nextlat.horizon=1,2", "--out", str(out), *TINY,
              f"data.cache_dir={corpus_cache}"]
    assert _sweep([*common, "--dry-run"]).returncode == 0
    plan = read_plan(out)
    first = plan.runs[0]
    # The first run was interrupted at step 2 (it has the step-2 checkpoint, no marker).
    subprocess.run([*train_command(plan, first, 1), "train.max_steps=2"], check=True,
                   capture_output=True, timeout=600)
    done = _sweep(common)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 runs, 0 finished before, 2 to run" in done.stdout
    assert "resuming from" in (Path(first.dir) / "sweep.log").read_text()
    for run in plan.runs:
        assert (Path(run.dir) / DONE_MARKER).is_file()
        steps = [json.loads(x)["step"] for x in (Path(run.dir) / "metrics.jsonl").open()]
        assert max(steps) == 4
    again = _sweep(common)
    assert again.returncode == 0 and "2 finished before, 0 to run" in again.stdout
    report = _sweep(["--report", str(out)])
    assert report.returncode == 0 and "| 1 | 1 / 1 |" in report.stdout
    assert "| 2 | 1 / 1 |" in report.stdout
