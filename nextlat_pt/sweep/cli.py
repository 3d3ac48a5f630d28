"""`nextlat-pt sweep`: a grid of runs from one config.

    nextlat-pt sweep [CONFIG] [k=v ...] --grid KEY=V1,V2 [--grid ...] [--seeds N]
                     [--out DIR] [--nproc-per-node N | --slurm SCRIPT] [--dry-run]
    nextlat-pt sweep --report DIR
"""

from __future__ import annotations

import argparse
import sys

from nextlat_pt.subcommand import ErrorParser, run_subcommand
from nextlat_pt.sweep.plan import MANIFEST, SweepError, expand, parse_grid, read_plan


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(
        prog="nextlat-pt sweep",
        description="Expand a grid of config values × seeds into runs (each with its own "
                    "directory under --out and its own run.seed), then train them one after "
                    "another here (finished runs are skipped, interrupted ones resume) or "
                    "submit them as one Slurm job array (--slurm). --report DIR prints and "
                    "writes the table of final metrics per grid point (mean ± std over seeds) "
                    "and the loss curves.")
    p.add_argument("args", nargs="*", metavar="[CONFIG] [k=v]",
                   help="the base config (a YAML file or a name in configs/; default: the "
                        "tiny defaults) and overrides shared by every run")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values; several --grid: their product")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds per grid point: run.seed, run.seed+1, ... (default 1)")
    p.add_argument("--out", metavar="DIR",
                   help="the sweep directory (default runs/<run.name>-sweep)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes per run, under torchrun (local runs)")
    p.add_argument("--slurm", metavar="SCRIPT",
                   help="submit one job array of SCRIPT (e.g. slurm/pretrain_125m.sh) instead "
                        "of running here; DATA and the other launcher variables come from "
                        "the environment, SAVE_DIR from the sweep")
    p.add_argument("--max-parallel", type=int, default=0,
                   help="with --slurm: at most this many array tasks at once (0: no limit)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every run's config, write the plan and print it; train nothing")
    p.add_argument("--report", metavar="DIR", help="report a sweep directory and exit")
    p.add_argument("--array-task", nargs=2, metavar=("MANIFEST", "INDEX"),
                   help=argparse.SUPPRESS)  # slurm/launch.sh in an array task
    return p


def _config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _run(args: argparse.Namespace) -> int:
    if args.array_task:
        from nextlat_pt.sweep.runner import array_task

        print("\n".join(array_task(args.array_task[0], int(args.array_task[1]))))
        return 0
    if args.report:
        from nextlat_pt.sweep.report import report

        print(report(args.report), end="")
        print(f"(written: {args.report}/report.md, report.json, loss_curves.png)")
        return 0
    if not args.grid and args.seeds == 1:
        raise SweepError("nothing to sweep: give --grid KEY=V1,V2 and/or --seeds N (or "
                         "--report DIR for a finished sweep)")
    if args.slurm and args.nproc_per_node != 1:
        raise SweepError("--nproc-per-node is for local runs; with --slurm the job script's "
                         "NODES / NPROC_PER_NODE set the layout")
    from pathlib import Path

    from nextlat_pt.config import load_config
    from nextlat_pt.sweep.runner import check_configs, run_locally, submit_array

    config, overrides = _config_and_overrides(args.args)
    base = load_config(config, overrides)
    out = args.out or f"runs/{base.run.name}-sweep"
    plan = expand(config, overrides, parse_grid(args.grid), args.seeds, out, base.run.seed,
                  base.run.name)
    manifest = Path(plan.out) / MANIFEST
    if manifest.is_file() and not read_plan(manifest).same_sweep(plan):
        raise SweepError(f"{plan.out} holds another sweep ({manifest}); choose another --out, "
                         f"or remove that directory to start over")
    check_configs(plan, world_size=args.nproc_per_node)
    plan.write()
    if args.dry_run:
        for run in plan.runs:
            print(f"{run.index}\t{run.dir}\t{' '.join(run.overrides)}")
        print(f"{len(plan.runs)} runs planned in {manifest} (dry run: nothing trained)")
        return 0
    if args.slurm:
        submitted = submit_array(plan, manifest, args.slurm, max_parallel=args.max_parallel)
        print(f"submitted {len(submitted)} array task(s) of {args.slurm}: runs "
              f"{','.join(map(str, submitted)) or '(none: all finished)'}; each writes into "
              f"its run directory under {plan.out}; report with nextlat-pt sweep --report "
              f"{plan.out}")
        return 0
    return run_locally(plan, args.nproc_per_node)


def sweep_main(argv: list[str] | None = None) -> int:
    """Entry point of `nextlat-pt sweep`; returns the exit status (2 on bad input)."""
    status = 0

    def run(args: argparse.Namespace) -> None:
        nonlocal status
        status = _run(args)

    code = run_subcommand(build_parser(), run, argv, errors=(SweepError,))
    return code or status


if __name__ == "__main__":
    sys.exit(sweep_main())
