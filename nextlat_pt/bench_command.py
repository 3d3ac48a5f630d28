"""`nextlat-pt bench`: the benchmark suite of the source checkout (bench/run_all.py).

The benchmarks are development tools that live beside the package in the repository's
bench/ folder (with the GPU script and the results they write), not inside the installed
package: an editable install (`pip install -e .`, what scripts/install.sh does) finds them
next to `nextlat_pt/`; a wheel install has no bench/ and the command says so.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def bench_dir() -> Path:
    """Where bench/ is in a source checkout: beside the nextlat_pt package folder."""
    return Path(__file__).resolve().parent.parent / "bench"


def bench_main(argv: list[str]) -> int:
    """Run bench/run_all.py's main with `argv`; exit code 2 when there is no checkout."""
    run_all = bench_dir() / "run_all.py"
    if not run_all.is_file():
        print(f"nextlat-pt bench: {run_all} not found: the benchmarks live in the source "
              f"checkout's bench/ folder, which a non-editable install does not ship; install "
              f"from a checkout with `pip install -e .` (scripts/install.sh does) or run "
              f"`python bench/run_all.py` there", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("run_all", run_all)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)  # puts bench/ on sys.path for the sibling modules
    return module.main(argv, prog="nextlat-pt bench")
