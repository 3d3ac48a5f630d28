"""`nextlat-pt make-task manhattan --output DIR [--grid 10] [--num-walks N] [--walk-len L] ...`"""

from __future__ import annotations

import argparse
from dataclasses import fields

from nextlat_pt.tasks.manhattan.build import TaskSettings


def add_parser(commands) -> argparse.ArgumentParser:
    """The `manhattan` subcommand of make-task (`tasks/cli.py`)."""
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
    p.set_defaults(run=_run)
    return p


def _run(args: argparse.Namespace) -> None:
    from nextlat_pt.tasks.manhattan.build import make_manhattan

    settings = TaskSettings(**{f.name: getattr(args, f.name) for f in fields(TaskSettings)})
    info = make_manhattan(args.output, settings)
    for split, counts in info["splits"].items():
        print(f"{split}: {counts['documents']} walks, {counts['samples']} samples")
