"""A sweep's plan: the grid × seeds expanded into runs, each with its own directory, seed
and overrides, kept in `DIR/sweep.json` (the manifest) so that a relaunch, a Slurm array
task and `--report` all read the same list.

Pure Python (no torch): expanding, checking and reading a plan answers at once.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "sweep.json"
DONE_MARKER = "SWEEP_DONE"  # written in a run's directory when its training finished


class SweepError(ValueError):
    """Bad sweep input: one line naming the problem and the fix."""


@dataclass
class PlannedRun:
    """One run of the sweep: its grid point, seed, directory and the overrides that make it."""

    index: int
    name: str
    point: dict[str, str]  # grid key -> value, as given on the command line
    seed: int
    dir: str
    overrides: list[str]  # grid values, run.seed, run.name (run.dir is added by the runner)


@dataclass
class SweepPlan:
    config: str | None  # the base config (a YAML path or a name in configs/), None: defaults
    base_overrides: list[str]
    grid: dict[str, list[str]]
    seeds: int
    out: str
    runs: list[PlannedRun] = field(default_factory=list)

    def write(self) -> Path:
        """`out/sweep.json`, written atomically (temp + rename)."""
        path = Path(self.out) / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def same_sweep(self, other: SweepPlan) -> bool:
        return (self.config, self.base_overrides, self.grid, self.seeds) == (
            other.config, other.base_overrides, other.grid, other.seeds)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`key=v1,v2` items -> {key: [v1, v2]}; a key given twice or without values is refused.

    Values are split on commas outside brackets, so `data.train=[{...},{...}]` stays whole.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise SweepError(f"--grid {item!r} is not section.key=v1,v2 (e.g. --grid "
                             f"train.lr=1e-3,3e-3)")
        if key in grid:
            raise SweepError(f"--grid names {key} twice; give all its values in one "
                             f"--grid {key}=v1,v2")
        parts = [v.strip() for v in _split_top_level(values)]
        if not parts or any(not v for v in parts):
            raise SweepError(f"--grid {item!r} has an empty value; list values as "
                             f"{key}=v1,v2")
        if key in ("run.dir", "run.seed", "run.name"):
            raise SweepError(f"--grid {key}: the sweep sets {key} for every run itself (use "
                             f"--seeds N for seeds, --out for the directory)")
        grid[key] = parts
    return grid


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:40] or "v"


def run_name(point: dict[str, str], seed_index: int) -> str:
    """A directory name readable at a glance: the last part of each key, its value, the seed
    index (e.g. `lr=3e-3_horizon=2_seed1`)."""
    parts = [f"{key.rsplit('.', 1)[-1]}={_slug(value)}" for key, value in point.items()]
    return "_".join([*parts, f"seed{seed_index}"])


def expand(config: str | None, base_overrides: list[str], grid: dict[str, list[str]],
           seeds: int, out: str, base_seed: int, sweep_name: str) -> SweepPlan:
    """Every grid point × `seeds` seeds (base_seed, base_seed+1, ...), in a fixed order."""
    if seeds < 1:
        raise SweepError(f"--seeds must be at least 1 (got {seeds})")
    plan = SweepPlan(config, list(base_overrides), grid, seeds, str(Path(out).resolve()))
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        point = dict(zip(keys, values))
        for s in range(seeds):
            name = run_name(point, s)
            seed = base_seed + s
            overrides = [f"{k}={v}" for k, v in point.items()]
            overrides += [f"run.seed={seed}", f"run.name={sweep_name}-{name}"]
            plan.runs.append(PlannedRun(len(plan.runs), name, point, seed,
                                        str(Path(out).resolve() / name), overrides))
    names = [r.name for r in plan.runs]
    if len(set(names)) != len(names):
        raise SweepError("two grid points give the same run directory name (values that "
                         "differ only in characters a directory name cannot hold); rename "
                         "the values")
    return plan


def read_plan(path: str | Path) -> SweepPlan:
    """The manifest at `path` (a sweep directory or its sweep.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise SweepError(f"{path} does not exist: give the --out directory of a sweep "
                         f"(nextlat-pt sweep CONFIG --grid ... --out DIR writes DIR/{MANIFEST})")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        runs = [PlannedRun(**r) for r in data.pop("runs")]
        return SweepPlan(**data, runs=runs)
    except (ValueError, TypeError, KeyError) as err:
        raise SweepError(f"{path} is not a sweep manifest ({err}); remove it or point to "
                         f"another sweep directory") from err


def is_done(run: PlannedRun) -> bool:
    return (Path(run.dir) / DONE_MARKER).is_file()
