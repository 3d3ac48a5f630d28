"""`nextlat-pt eval`: validation loss / perplexity of a checkpoint or an HF folder, latent
diagnostics, and lm-eval-harness on the export.

    nextlat-pt eval CHECKPOINT_OR_HF_DIR [--data SHARDS] [--max-batches N] [--batch-size 8]
    nextlat-pt eval CHECKPOINT_OR_HF_DIR --diagnostics [--probe-offsets 8]
                    [--rank-sequences 256] [--rank-tokens 256]
    nextlat-pt eval compare A B [--data SHARDS] [diagnostics options]   (eval/compare.py)
    nextlat-pt eval CHECKPOINT_OR_HF_DIR --lm-eval [--tasks nextlat_next_line,...] [--limit N]

Without --data the validation split the model was trained with is used, when recorded; the
whole split is scored unless --max-batches limits it.
A checkpoint is exported to a temporary folder for the harness.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from nextlat_pt.eval.diagnostics_args import add_diagnostics_args, check_diagnostics_args
from nextlat_pt.subcommand import ErrorParser, UsageError, run_subcommand


def build_parser() -> ErrorParser:
    parser = ErrorParser(
        prog="nextlat-pt eval",
        description="Validation loss and perplexity on prepared shards, and lm-eval-harness "
                    "(offline, with the shipped tasks) on a nextlat_pt checkpoint or a "
                    "Hugging Face folder.")
    parser.add_argument("model", type=Path,
                        help="a checkpoint (step, checkpoints or run dir) or an HF folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared shards: a prepare-data output (its valid split, else "
                             "its only split) or one split's directory; default: the "
                             "validation data recorded with the model")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="score only the first N batches (default: the whole split)")
    parser.add_argument("--no-tokenizer-check", action="store_true",
                        help="score shards made with another tokenizer (fingerprint)")
    parser.add_argument("--lm-eval", action="store_true",
                        help="also run lm-eval-harness on the (exported) model")
    parser.add_argument("--tasks", default="",
                        help="comma-separated harness tasks (default: all shipped: "
                             "nextlat_next_line, nextlat_code_ppl)")
    parser.add_argument("--limit", type=int, default=None, help="harness: docs per task")
    parser.add_argument("--task-dir", type=Path, default=None,
                        help="where to write the tasks' data and YAML (default: a temp dir)")
    parser.add_argument("--task-data", nargs="+", default=None, metavar="PATH",
                        help="build the harness tasks from your own held-out data: text files, "
                             "directories or globs (.txt, .jsonl[.gz|.zst]), or one prepared "
                             "dataset (its valid split); default: the built-in corpus's "
                             "held-out files")
    parser.add_argument("--text-field", default="text",
                        help="--task-data JSON lines: the field holding the text")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also the latent diagnostics: effective rank of the final hidden "
                             "states and linear probes for the tokens 1..K ahead")
    add_diagnostics_args(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise UsageError("--batch-size and --max-batches must be at least 1")
    check_diagnostics_args(args)
    if args.task_data and not args.lm_eval:
        raise UsageError("--task-data builds the --lm-eval tasks; add --lm-eval")
    if args.lm_eval:  # before any validation or export, which can take minutes
        from nextlat_pt.eval.lm_eval_check import lm_eval_missing

        missing = lm_eval_missing()
        if missing:
            raise UsageError(missing)
    args.task_sources = None
    if args.task_data:  # read now: a wrong path is reported before the model is scored
        from nextlat_pt.eval.tasks import user_sources

        args.task_sources = user_sources(args.task_data, args.text_field)
        print(f"lm-eval tasks from {len(args.task_sources)} documents of "
              f"{' '.join(args.task_data)}", flush=True)
    src: Path = args.model
    if not src.is_dir():
        raise UsageError(f"{src} is not a directory; give a checkpoint (step, checkpoints or "
                         f"run directory) or a Hugging Face folder")
    from nextlat_pt.eval.sources import check_model_dir, open_model, recorded_valid

    hf = check_model_dir(src)
    data = args.data or recorded_valid(src, hf)
    out: dict[str, Any] = {}
    if data is None and not args.lm_eval:
        raise UsageError("no validation data recorded with the model; pass --data SHARDS")
    if data is None and args.diagnostics:
        raise UsageError("--diagnostics needs validation data: pass --data SHARDS")
    if data is not None:
        from nextlat_pt.eval.valid_loss import validation_loss

        model = open_model(src, hf)
        result = validation_loss(model, data, args.batch_size, args.max_batches,
                                 check_tokenizer=not args.no_tokenizer_check, progress=True)
        print(f"{model.description}: {result.summary()}", flush=True)
        out["validation"] = result.to_dict()
        if args.diagnostics:
            out["diagnostics"] = _diagnostics(model, data, args)
        del model
    elif args.lm_eval:
        print("note: no validation data (pass --data SHARDS); running the harness only")
    if args.lm_eval:
        out["lm_eval"] = _harness(src, hf, args)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def _diagnostics(model: Any, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from nextlat_pt.eval.diagnostics import load_windows, run_diagnostics

    fingerprint = None if args.no_tokenizer_check else model.tokenizer_fingerprint
    windows = load_windows(data, args.rank_sequences, args.rank_tokens, model.max_positions,
                           fingerprint)
    if windows.shortfall():
        print(windows.shortfall(), flush=True)
    result = run_diagnostics(model, windows, args.probe_offsets, probe_steps=args.probe_steps,
                             probe_lr=args.probe_lr, batch_size=args.batch_size)
    print(result.summary(), flush=True)
    return result.to_dict()


def _harness(src: Path, hf: bool, args: argparse.Namespace) -> dict[str, Any]:
    from nextlat_pt.eval.harness import results_table, run_lm_eval

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    with tempfile.TemporaryDirectory(prefix="nextlat-eval-") as tmp:
        model_dir = src
        if not hf:
            from nextlat_pt.convert.to_hf import export_to_hf

            model_dir = Path(tmp) / "hf"
            export_to_hf(src, model_dir, progress=False)
            print(f"exported {src} to a temporary folder for the harness", flush=True)
        task_dir = args.task_dir or Path(tmp) / "tasks"
        results = run_lm_eval(model_dir.resolve(), task_dir, tasks=tasks, limit=args.limit,
                              sources=args.task_sources)
    print(results_table(results), flush=True)
    return results["results"]


def eval_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt eval ...`; returns the exit code (2 on bad input)."""

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":  # a model folder named so: give it as ./compare
        from nextlat_pt.eval.compare import build_parser as compare_parser
        from nextlat_pt.eval.compare import compare

        return run_subcommand(compare_parser(), compare, argv[1:])
    return run_subcommand(build_parser(), _run, argv)
