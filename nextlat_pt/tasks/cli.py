"""`nextlat-pt make-task TASK ...`: one subcommand per built-in task.

    nextlat-pt make-task manhattan --output DIR [--grid 10] ...
    nextlat-pt make-task pathstar --output DIR --degree D --length L [--nodes N] ...

Each task module adds its parser (`add_parser(commands)`, which sets `run` to the function
that writes the task) and nothing heavy is imported before the arguments are checked.
"""

from __future__ import annotations

import argparse
import sys

from nextlat_pt.subcommand import ErrorParser, run_subcommand
from nextlat_pt.tasks.manhattan.cli import add_parser as add_manhattan
from nextlat_pt.tasks.pathstar.cli import add_parser as add_pathstar

TASKS = ("manhattan", "pathstar")


def build_parser() -> ErrorParser:
    """The make-task parser with every task's subcommand."""
    parser = ErrorParser(
        prog="nextlat-pt make-task",
        description="Generate a synthetic task with its tokenizer and prepared shards.")
    commands = parser.add_subparsers(dest="task", metavar="TASK", required=True,
                                     parser_class=ErrorParser)
    add_manhattan(commands)
    add_pathstar(commands)
    return parser


def _run(args: argparse.Namespace) -> None:
    args.run(args)


def make_task_main(argv: list[str]) -> int:
    """Entry point of `nextlat-pt make-task`; returns the exit status (2 on bad input)."""
    if argv and not argv[0].startswith("-") and argv[0] not in TASKS:
        print(f"nextlat-pt: error: make-task knows the tasks {', '.join(TASKS)}, got "
              f"{argv[0]!r}; run `nextlat-pt make-task TASK --help`", file=sys.stderr)
        return 2
    return run_subcommand(build_parser(), _run, argv, errors=(ValueError,))
