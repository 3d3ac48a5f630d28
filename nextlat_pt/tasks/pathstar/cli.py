"""`nextlat-pt make-task pathstar --degree D --length L --nodes N --num-graphs G --seed S
--output DIR [--test-graphs T] [--reverse]`"""

from __future__ import annotations

import argparse
from dataclasses import fields

from nextlat_pt.tasks.pathstar.build import PathStarSettings


def add_parser(commands) -> argparse.ArgumentParser:
    """The `pathstar` subcommand of make-task (`tasks/cli.py`)."""
    d = PathStarSettings()
    p = commands.add_parser(
        "pathstar", help="path-star graphs G(D, L): find the start->goal path (planning)",
        description="Generate Bachmann & Nagarajan's path-star task: graphs of D arms of L "
                    "nodes with random labels, written as a shuffled edge list, start and goal "
                    "(the prompt) then the path (the target, the only tokens with a loss); "
                    "held-out graphs never seen in training; a one-token-per-symbol "
                    "tokenizer and prepared shards.")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--degree", type=int, default=d.degree, help="arms from the start (D)")
    p.add_argument("--length", type=int, default=d.length,
                   help="nodes on the path, start and goal included (L)")
    p.add_argument("--nodes", type=int, default=d.nodes, help="node labels to draw from (N)")
    p.add_argument("--num-graphs", type=int, default=d.num_graphs, help="training graphs")
    p.add_argument("--test-graphs", type=int, default=d.test_graphs,
                   help="held-out graphs (the valid split and test.jsonl)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the graphs and the split")
    p.add_argument("--reverse", action="store_true",
                   help="write the target path goal -> start (the sanity check: next-token "
                        "training solves it)")
    p.set_defaults(run=_run)
    return p


def _run(args: argparse.Namespace) -> None:
    from nextlat_pt.tasks.pathstar.build import make_pathstar

    settings = PathStarSettings(**{f.name: getattr(args, f.name)
                                   for f in fields(PathStarSettings)})
    settings.check()  # before any import of the data pipeline
    info = make_pathstar(args.output, settings)
    for split, counts in info["splits"].items():
        print(f"{split}: {counts['documents']} graphs, {counts['samples']} samples of "
              f"{info['seq_len'] + 1} tokens")
