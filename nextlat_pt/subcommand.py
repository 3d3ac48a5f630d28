"""The frame every `nextlat-pt` subcommand with its own parser shares: argparse that
reports one line instead of exiting, and the wrapper that turns the project's input errors
into `nextlat-pt: error: ...` with exit code 2.

Nothing heavy is imported here (no torch, no megatron), so `--help` and argument checks
answer at once; error types are looked up only in modules already imported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


class UsageError(Exception):
    """Bad command-line input (argparse's message)."""


class ErrorParser(argparse.ArgumentParser):
    """argparse that reports `nextlat-pt: error: ...` and lets the caller return 2 instead
    of exiting the process."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def run_subcommand(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any],
                   argv: list[str] | None, errors: tuple[type[BaseException], ...] = ()
                   ) -> int:
    """Parse `argv`, run, and turn the project's input errors into one line and exit 2.

    Shared by `convert`, `eval` and `generate`; `errors` adds a command's own error types.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)  # --help answers here, before anything heavy loads
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except UsageError as err:
        print(f"nextlat-pt: error: {err}", file=sys.stderr)
        return 2
    try:
        run(args)
    except Exception as err:
        if not isinstance(err, (*_loaded_user_errors(), *errors)):
            raise
        print(f"nextlat-pt: error: {err}", file=sys.stderr)
        return 2
    return 0


# The project's one-line input errors, by module. Looked up only in modules already imported
# (an error cannot come from one that is not), so that arguments are checked, and --help is
# answered, before megatron and torch load.
_USER_ERRORS = (("nextlat_pt.config", "ConfigError"), ("nextlat_pt.data.errors", "DataError"),
                ("nextlat_pt.checkpointing.errors", "CheckpointError"),
                ("nextlat_pt.convert.errors", "ConvertError"))


def _loaded_user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [UsageError, FileNotFoundError]
    for module, name in _USER_ERRORS:
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)
