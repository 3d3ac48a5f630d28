"""`nextlat-pt`: the command-line entry point.

    nextlat-pt train [CONFIG.yaml|NAME] [section.key=value ...]

Config mistakes are reported in one line (exit code 2) before any process group starts.
"""

from __future__ import annotations

import argparse
import os
import sys

from nextlat_pt.config import ConfigError, check_paths, load_config, validate
from nextlat_pt.launch_env import INTERRUPTED_EXIT_CODE, report_error
from nextlat_pt.quiet import silence_library_noise


def _cmd_train(args: argparse.Namespace) -> int:
    config_path = args.config
    overrides = list(args.overrides)
    if config_path is not None and "=" in config_path:  # `train key=value` without a file
        overrides.insert(0, config_path)
        config_path = None
    try:
        cfg = load_config(config_path, overrides)
        if args.print_config:
            from nextlat_pt.config_keys import format_config

            given = " ".join([config_path or "(defaults)", *overrides])
            try:
                print(format_config(cfg, f"nextlat-pt train {given}: every key, resolved "
                                         f"(defaults < config file < overrides)"), flush=True)
            except BrokenPipeError:  # `| head`: the reader has all it wanted
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
            return 0
        validate(cfg)
        check_paths(cfg)
    except ConfigError as err:
        report_error(f"nextlat-pt: config error: {err}")
        return 2
    silence_library_noise()
    from nextlat_pt.checkpointing.errors import CheckpointError
    from nextlat_pt.data.errors import DataError
    from nextlat_pt.train.run import main as train_main

    try:
        return train_main(cfg)
    except (DataError, CheckpointError, ConfigError) as err:
        report_error(f"nextlat-pt: error: {err}")
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first one saves), or one at start-up
        pointer = cfg.checkpoint_dir / "latest"
        latest = pointer.read_text().strip() if pointer.is_file() else ""
        where = (f"the newest checkpoint is {cfg.checkpoint_dir / latest}; relaunch the same "
                 f"command to resume from it" if latest else "no checkpoint yet")
        report_error(f"nextlat-pt: interrupted: stopped without saving; {where}")
        return INTERRUPTED_EXIT_CODE


def _cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from nextlat_pt.data.commands import train_tokenizer_main

    return train_tokenizer_main(args.rest)


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from nextlat_pt.data.commands import prepare_data_main

    return prepare_data_main(args.rest)


def _cmd_ckpt(args: argparse.Namespace) -> int:
    from nextlat_pt.train.ckpt_tool import main as ckpt_main

    return ckpt_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextlat-pt", description="Pretraining with Next-Latent Prediction (NextLat)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a model (default: the tiny config on the built-in corpus)"
    )
    train.add_argument("config", nargs="?", default=None,
                       help="a YAML file or a name in configs/ (default: tiny)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.add_argument("--print-config", action="store_true",
                       help="print every config key, resolved, with its meaning, and exit")
    train.set_defaults(func=_cmd_train)
    for name, func, text in (
        ("train-tokenizer", _cmd_train_tokenizer,
         "train a sentencepiece tokenizer: --input FILES... --vocab-size N --output DIR"),
        ("prepare-data", _cmd_prepare_data,
         "tokenize and pack into webdataset shards: --input ... --tokenizer DIR "
         "--seq-len N --output DIR"),
        ("convert", _cmd_convert,
         "--to hf CHECKPOINT OUT | --to nextlat HF_DIR OUT [parallel.tp=..]"),
        ("eval", _cmd_eval,
         "validation loss/perplexity of a checkpoint or HF folder; --diagnostics (effective "
         "rank, probes); --lm-eval for the harness; eval compare A B"),
        ("make-task", _cmd_make_task,
         "generate a synthetic task and its shards: make-task manhattan|pathstar "
         "--output DIR ..."),
        ("generate", _cmd_generate,
         "text from a checkpoint or export: MODEL --prompt TEXT --max-new-tokens N "
         "[--draft-len K | --adaptive threshold|acceptance]"),
        ("bench", _cmd_bench,
         "every benchmark, one table of ratios (source checkout): [--quick] [--json PATH]"),
        ("sweep", _cmd_sweep,
         "a grid of runs from one config: [CONFIG] --grid KEY=V1,V2 [--seeds N] [--out DIR] "
         "[--slurm SCRIPT]; sweep --report DIR"),
    ):
        command = sub.add_parser(name, help=text, add_help=False)
        command.add_argument("rest", nargs=argparse.REMAINDER)
        command.set_defaults(func=func)
    ckpt = sub.add_parser("ckpt", help="list or inspect checkpoints: ckpt list DIR | "
                                       "ckpt inspect STEP_DIR [CONFIG] [k=v ...]",
                          add_help=False)
    ckpt.add_argument("rest", nargs=argparse.REMAINDER)
    ckpt.set_defaults(func=_cmd_ckpt)
    return parser


def _cmd_convert(args: argparse.Namespace) -> int:
    from nextlat_pt.convert import convert_main

    return convert_main(args.rest)


def _cmd_eval(args: argparse.Namespace) -> int:
    from nextlat_pt.eval import eval_main

    return eval_main(args.rest)


def _cmd_generate(args: argparse.Namespace) -> int:
    from nextlat_pt.generate import generate_main

    return generate_main(args.rest)


def _cmd_make_task(args: argparse.Namespace) -> int:
    from nextlat_pt.tasks.cli import make_task_main

    return make_task_main(args.rest)


def _cmd_bench(args: argparse.Namespace) -> int:
    from nextlat_pt.bench_command import bench_main

    return bench_main(args.rest)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nextlat_pt.sweep.cli import sweep_main

    return sweep_main(args.rest)


# Subcommands with their own argument parsers: everything after the name is theirs.
_PASSTHROUGH = {"train-tokenizer": _cmd_train_tokenizer, "prepare-data": _cmd_prepare_data,
                "ckpt": _cmd_ckpt, "convert": _cmd_convert, "eval": _cmd_eval,
                "make-task": _cmd_make_task, "generate": _cmd_generate, "bench": _cmd_bench,
                "sweep": _cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the subcommand; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PASSTHROUGH:
        silence_library_noise()
        return _PASSTHROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command != "train":
        silence_library_noise()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
