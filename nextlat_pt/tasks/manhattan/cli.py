"""`nextlat-pt make-task manhattan --output DIR [--grid 10] [--num-walks N] [--walk-len L] ...`"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from nextlat_pt.tasks.manhattan.build import TaskSettings, make_manhattan


def _add_manhattan(commands) -> argparse.ArgumentParser:
    d = TaskSettings()
    p = commands.add_parser(
        "manhattan", help="a hidden city grid and random walks on it (world modelling)",
        description="Generate the Manhattan world-modelling task: a hidden city grid with "
                    "removed and one-way streets, random walks on it as text (start token + "
                    "N/E/S/W moves), a one-token-per-symbol tokenizer, and prepared shards.")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--grid", type=int, default=d.grid, help="intersections per side")
    p.add_argument("--num-walks", type=int, default=d.num_walks)
    p.add_argument("--walk-len", type=int, default=d.walk_len, help="moves per walk")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="the model's sequence length")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the city and the walks")
    p.add_argument("--remove-fraction", type=float, default=d.remove_fraction,
                   help="share of street segments tried for removal")
    p.add_argument("--oneway-fraction", type=float, default=d.oneway_fraction,
                   help="share of street segments tried as one-way")
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    return p


def build_parser() -> argparse.ArgumentParser:
    """`nextlat-pt make-task TASK ...`: one subcommand per task (today: manhattan)."""
    parser = argparse.ArgumentParser(
        prog="nextlat-pt make-task",
        description="Generate a synthetic task with its tokenizer and prepared shards.")
    commands = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    _add_manhattan(commands)
    return parser


def make_task_main(argv: list[str]) -> int:
    """Entry point of `nextlat-pt make-task`; returns the exit status (2 on bad input)."""
    if argv and not argv[0].startswith("-") and argv[0] != "manhattan":
        print(f"nextlat-pt: error: make-task knows the task 'manhattan', got {argv[0]}; "
              "run `nextlat-pt make-task manhattan --output DIR`", file=sys.stderr)
        return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or argparse's one-line usage error (2)
        return int(exit_.code or 0)
    settings = TaskSettings(**{f.name: getattr(args, f.name) for f in fields(TaskSettings)})
    from nextlat_pt.data.errors import DataError

    try:
        info = make_manhattan(args.output, settings)
    except (ValueError, DataError) as err:
        print(f"nextlat-pt: error: {err}", file=sys.stderr)
        return 2
    for split, counts in info["splits"].items():
        print(f"{split}: {counts['documents']} walks, {counts['samples']} samples")
    return 0
