"""Running a sweep's plan: one run after another on this machine, or as one Slurm job array.

Each run is the ordinary `nextlat-pt train` with the run's overrides and its own `run.dir`,
so everything a single run does (resume from its newest checkpoint, exit 75 on preemption)
holds per run. A run whose training finished gets a marker file and is skipped next time;
an interrupted one resumes when the sweep is launched again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from nextlat_pt.sweep.plan import DONE_MARKER, PlannedRun, SweepError, SweepPlan, is_done

STOPPED_CODES = (75, 130)  # preempted / Ctrl-C: the run saved a checkpoint; stop the sweep


def check_configs(plan: SweepPlan, world_size: int) -> None:
    """Every run's config loads and validates before the first one starts (one line for the
    first bad one, naming the run)."""
    from nextlat_pt.config import ConfigError, load_config, validate

    for run in plan.runs:
        try:
            validate(load_config(plan.config, [*plan.base_overrides, *run.overrides]),
                     world_size=world_size)
        except (ConfigError, FileNotFoundError) as err:
            raise SweepError(f"run {run.name}: {err}") from err


def train_command(plan: SweepPlan, run: PlannedRun, nproc_per_node: int) -> list[str]:
    """The `nextlat-pt train` command of one run (under torchrun for several processes)."""
    launcher = [sys.executable, "-m", "nextlat_pt"] if nproc_per_node == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc_per_node}", "-m", "nextlat_pt"]
    config = [plan.config] if plan.config else []
    return [*launcher, "train", *config, *plan.base_overrides, *run.overrides,
            f"run.dir={run.dir}"]


def run_locally(plan: SweepPlan, nproc_per_node: int = 1,
                log: Callable[[str], None] = print) -> int:
    """Run every unfinished run in order; returns 0 when all finished, the run's exit code
    when one was stopped (75 preempted, 130 Ctrl-C: launch again to resume), 1 when some
    failed (the others still ran)."""
    failed: list[str] = []
    todo = [r for r in plan.runs if not is_done(r)]
    log(f"sweep {plan.out}: {len(plan.runs)} runs, {len(plan.runs) - len(todo)} finished "
        f"before, {len(todo)} to run")
    for run in todo:
        Path(run.dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(run.dir) / "sweep.log"
        log(f"[{run.index + 1}/{len(plan.runs)}] {run.name}: training (log: {log_path})")
        with open(log_path, "a", encoding="utf-8") as out:
            code = subprocess.call(train_command(plan, run, nproc_per_node), stdout=out,
                                   stderr=subprocess.STDOUT, env=os.environ.copy())
        if code == 0:
            (Path(run.dir) / DONE_MARKER).write_text("finished\n")
            log(f"[{run.index + 1}/{len(plan.runs)}] {run.name}: finished")
        elif code in STOPPED_CODES:
            log(f"{run.name} stopped (exit {code}) with a checkpoint; launch the same sweep "
                f"command again to resume it and the runs after it")
            return code
        else:
            failed.append(run.name)
            log(f"[{run.index + 1}/{len(plan.runs)}] {run.name}: FAILED (exit {code}); the "
                f"last lines of {log_path} say why; the sweep goes on")
    if failed:
        log(f"{len(failed)} run(s) failed: {', '.join(failed)}; fix and launch again (finished "
            f"runs are skipped)")
        return 1
    log(f"all {len(plan.runs)} runs finished; nextlat-pt sweep --report {plan.out}")
    return 0


def submit_array(plan: SweepPlan, manifest: Path, script: str, sbatch: str = "sbatch",
                 max_parallel: int = 0) -> list[int]:
    """`sbatch --array=I,J,...` of `script` over the unfinished runs; each array task's
    launcher (slurm/launch.sh) reads its run from the manifest (NEXTLAT_SWEEP). Returns the
    submitted indices."""
    if not Path(script).is_file():
        raise SweepError(f"--slurm {script} does not exist; give a job script such as "
                         f"slurm/pretrain_125m.sh")
    todo = [r.index for r in plan.runs if not is_done(r)]
    if not todo:
        return []
    array = ",".join(map(str, todo)) + (f"%{max_parallel}" if max_parallel else "")
    env = dict(os.environ, NEXTLAT_SWEEP=str(manifest.resolve()))
    if plan.config:
        config = Path(plan.config)
        env["CONFIG"] = str(config.resolve()) if config.is_file() else plan.config
    else:
        env["CONFIG"] = "tiny"  # the defaults (configs/tiny.yaml)
    cmd = [sbatch, f"--array={array}", "--export=ALL", script]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SweepError(f"sbatch failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return todo


def array_task(manifest: str, index: int) -> list[str]:
    """For slurm/launch.sh in array task `index`: the run's directory (first line), then the
    overrides it adds after the config, one per line."""
    from nextlat_pt.sweep.plan import read_plan

    plan = read_plan(manifest)
    if not 0 <= index < len(plan.runs):
        raise SweepError(f"array index {index} is outside the sweep's {len(plan.runs)} runs "
                         f"({manifest})")
    run = plan.runs[index]
    return [run.dir, *plan.base_overrides, *run.overrides]
