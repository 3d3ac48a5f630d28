"""What the experiment scripts share: training one run through the CLI (resumably), reading
its metrics, statistics over seeds, and the machine line of a results page."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def thread_env() -> dict[str, str]:
    """The environment of a run: one torch thread (runs go several at a time)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train_once(run_dir: Path, overrides: list[str], seed: int) -> float:
    """Train `nextlat-pt train run.dir=RUN_DIR run.seed=1000+SEED OVERRIDES` unless it finished
    before; its training wall time (recorded in RUN_DIR/wall_s.json when it ends)."""
    wall_file = run_dir / "wall_s.json"
    if wall_file.is_file():
        return json.loads(wall_file.read_text())["wall_s"]
    cmd = [sys.executable, "-m", "nextlat_pt", "train", f"run.dir={run_dir}",
           f"run.seed={1000 + seed}", *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, env=thread_env(), stdout=log,
                       stderr=subprocess.STDOUT)
    wall = time.time() - t0
    wall_file.write_text(json.dumps({"wall_s": wall}) + "\n")
    return wall


def run_records(run_dir: Path) -> dict:
    """The run's last validation CE and its validation and training CE curves."""
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if line.strip()]
    vals = [r for r in records if r.get("val_ce") is not None]
    return {"val_ce": vals[-1]["val_ce"] if vals else None,
            "curve": [(r["step"], r["val_ce"]) for r in vals],
            "train_curve": [(r["step"], r["ce"]) for r in records if r.get("ce") is not None]}


def stats(values: list[float]) -> dict:
    """Mean, standard deviation (0 for one value) and the values themselves."""
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def torch_version() -> str:
    """The installed torch's version."""
    import torch

    return torch.__version__


def machine(parallel: int) -> str:
    """One line naming the machine the runs trained on."""
    return (f"{platform.node()} ({platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs shared with other jobs), Python "
            f"{platform.python_version()}, torch {torch_version()}; {parallel} runs at a "
            "time, 1 thread each")
