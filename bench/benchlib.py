"""What every benchmark shares: the machine it ran on, interleaved timing, quartiles.

Kept free of heavy imports at module level (torch is imported inside `machine_info`):
prepare-data's spawned workers re-import the benchmark that imports this module.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPUs this process may run on (affinity mask: respects cgroup/Slurm pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, versions and GPU: what the numbers were measured on."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
        "device": "cuda" if gpu else "cpu",
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line: CPU, cores, threads, versions, GPU, load."""
    text = (f"{info['cpu']}; {info['usable_cores']} usable cores ({info['cpu_count']} online); "
            f"torch {info['torch']} with {info['torch_threads']} threads; "
            f"python {info['python']}; device {info['device']}")
    if info.get("gpu"):
        text += f" ({info['gpu']})"
    if info.get("load_average"):
        text += f"; load average {info['load_average'][0]:.2f}"
    return text


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q25, median, q75); for a single value all three are that value."""
    if not values:
        raise ValueError("quartiles of an empty list")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q25, q50, q75 = statistics.quantiles(values, n=4, method="inclusive")
    return q25, q50, q75


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over repeats of time / base time in the same repeat (drift-insensitive)."""
    if len(times) != len(base) or not times:
        raise ValueError("paired_ratio needs two equally long, non-empty lists")
    return statistics.median(t / b for t, b in zip(times, base))


def interleave(steps: dict[str, Callable[[], float]], repeats: int, warmup: int
               ) -> dict[str, list[float]]:
    """Warm every step up, then time them round-robin; returns each step's times.

    Each step is a callable that does one unit of work and returns its own wall time (it
    knows what to exclude, e.g. a device sync before reading the clock). Every repeat runs
    each step once, the order rotated by one per repeat, so slow phases of a shared machine
    hit all steps alike.
    """
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(steps[name]())
    return times


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None, min_seconds: float = 0.0) -> float:
    """Median wall time of `fn()` over `repeats` samples, after `warmup` untimed calls.

    With `min_seconds`, each sample loops `fn` until it has run that long and reports the
    time per call (short kernels: the clock's resolution and Python overhead amortised).
    """
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


# configs/<name>.yaml sections that describe the model and objective (the rest is the run's).
MODEL_SECTIONS = ("model", "nextlat")


def config_overrides(name: str = "1b") -> list[str]:
    """configs/<name>.yaml's model and objective keys as `section.key=value` overrides."""
    import json
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    out = []
    for section in MODEL_SECTIONS:
        for key, value in (data.get(section) or {}).items():
            text = value if isinstance(value, str) else json.dumps(value)  # true, 1e-5
            out.append(f"{section}.{key}={text}")
    return out
