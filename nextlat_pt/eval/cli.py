"""`nextlat-pt eval`: validation loss / perplexity of a checkpoint or an HF folder, and
lm-eval-harness on the export.

    nextlat-pt eval CHECKPOINT_OR_HF_DIR [--data SHARDS] [--max-batches 8] [--batch-size 8]
    nextlat-pt eval CHECKPOINT_OR_HF_DIR --lm-eval [--tasks nextlat_next_line,...] [--limit N]

Without --data the validation split the model was trained with is used, when recorded.
A checkpoint is exported to a temporary folder for the harness.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from nextlat_pt.convert.cli import ErrorParser, UsageError
from nextlat_pt.convert.errors import ConvertError


def build_parser() -> ErrorParser:
    parser = ErrorParser(
        prog="nextlat-pt eval",
        description="Validation loss and perplexity on prepared shards, and lm-eval-harness "
                    "(offline, with the shipped tasks) on a nextlat_pt checkpoint or a "
                    "Hugging Face folder.")
    parser.add_argument("model", type=Path,
                        help="a checkpoint (step, checkpoints or run dir) or an HF folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared shards (prepare-data output or a dataset dir; its "
                             "valid split); default: the validation data recorded with the "
                             "model")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--max-batches", type=int, default=8,
                        help="validation batches (the first windows of the split)")
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
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser


def _recorded_valid(model_dir: Path, hf: bool) -> Path | None:
    """The validation data recorded with the model (trainer state or export info)."""
    from nextlat_pt.convert.to_hf import EXPORT_INFO

    try:
        if hf:
            info = json.loads((model_dir / EXPORT_INFO).read_text())
        else:
            from nextlat_pt.convert.source import open_checkpoint

            info = open_checkpoint(model_dir, verify=False).state
    except (OSError, json.JSONDecodeError, ConvertError):
        return None
    valid = (info.get("data") or {}).get("valid")
    return Path(valid) if valid and Path(valid).exists() else None


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from nextlat_pt.eval.models import HFModel, NextLatModel, is_hf_dir

    if args.batch_size < 1 or args.max_batches < 1:
        raise UsageError("--batch-size and --max-batches must be at least 1")
    src: Path = args.model
    if not src.is_dir():
        raise ConvertError(f"{src} is not a directory; give a checkpoint or an HF folder")
    hf = is_hf_dir(src)
    if not hf:
        from nextlat_pt.convert.source import is_nextlat_checkpoint_dir

        if not is_nextlat_checkpoint_dir(src):
            raise ConvertError(f"{src} is neither a nextlat_pt checkpoint nor a Hugging Face "
                               f"model folder (no config.json)")
    data = args.data or _recorded_valid(src, hf)
    out: dict[str, Any] = {}
    if data is None and not args.lm_eval:
        raise UsageError("no validation data recorded with the model; pass --data SHARDS")
    if data is not None:
        from nextlat_pt.convert.source import open_checkpoint
        from nextlat_pt.eval.valid_loss import validation_loss

        model = HFModel(src) if hf else NextLatModel(open_checkpoint(src))
        result = validation_loss(model, data, args.batch_size, args.max_batches,
                                 check_tokenizer=not args.no_tokenizer_check)
        print(f"{model.description}: {result.summary()}", flush=True)
        out["validation"] = result.to_dict()
        del model
    elif args.lm_eval:
        print("note: no validation data (pass --data SHARDS); running the harness only")
    if args.lm_eval:
        out["lm_eval"] = _harness(src, hf, args)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


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
        results = run_lm_eval(model_dir.resolve(), task_dir, tasks=tasks, limit=args.limit)
    print(results_table(results), flush=True)
    return results["results"]


def eval_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt eval ...`; returns the exit code (2 on bad input)."""
    from nextlat_pt.config import ConfigError
    from nextlat_pt.data.errors import DataError
    from nextlat_pt.train.checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _run(build_parser().parse_args(argv))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except (UsageError, ConvertError, ConfigError, CheckpointError, DataError,
            FileNotFoundError) as err:
        print(f"nextlat-pt: error: {err}", file=sys.stderr)
        return 2
    return 0
