"""experiments/path_star.py end to end on the smoke budget: tasks, NTP and NextLat runs on
identical budgets, held-out scoring, and the results files (a broken pipeline fails here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_study_runs_end_to_end_and_writes_its_results(tmp_path):
    out = tmp_path / "results" / "path_star"
    cmd = [sys.executable, str(REPO / "experiments" / "path_star.py"), "--budget", "smoke",
           "--families", "2,3", "--work", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.with_suffix(".json").read_text())
    runs = {(r["variant"], r["seed"]) for r in data["runs"]}
    assert runs == {("ntp", 0), ("nextlat", 0)}
    nextlat = next(r for r in data["runs"] if r["variant"] == "nextlat")
    assert "nextlat.horizon=1" in nextlat["overrides"]  # d = L - 2
    for r in data["runs"]:
        assert len(r["per_position_teacher_forced"]) == 3 and r["num_graphs"] == 16
    md = out.with_suffix(".md").read_text()
    assert "| G(2,3) | ntp |" in md and "| G(2,3) | nextlat |" in md
    assert out.with_suffix(".png").stat().st_size > 0
    # A second invocation reuses the finished runs instead of training them again.
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "seed 0:" not in proc.stdout
