"""`nextlat-pt eval compare A B`: two models (typically a NextLat and an NTP checkpoint) on
the same validation windows, side by side: next-token CE and accuracy, effective rank of the
final hidden states, and token-offset probe accuracy.

    nextlat-pt eval compare CKPT_A CKPT_B [--data SHARDS] [--rank-sequences 256]
                    [--rank-tokens 256] [--probe-offsets 8] [--json OUT]

The windows are those of --data, or else the validation split recorded with A (B's must be
the same data or absent). Both models must share a tokenizer. One model is in memory at a
time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextlat_pt.eval import defaults
from nextlat_pt.eval.diagnostics_args import add_diagnostics_args, check_diagnostics_args
from nextlat_pt.subcommand import ErrorParser, UsageError

if TYPE_CHECKING:
    from nextlat_pt.eval.diagnostics import DiagnosticsResult


def build_parser() -> ErrorParser:
    parser = ErrorParser(
        prog="nextlat-pt eval compare",
        description="Compare two models (checkpoints or HF folders with the same tokenizer) "
                    "on the same validation windows: next-token CE, effective rank of the "
                    "final hidden states and linear probes for the tokens 1..K ahead.")
    parser.add_argument("model_a", type=Path, help="model A (e.g. the NextLat checkpoint)")
    parser.add_argument("model_b", type=Path, help="model B (e.g. the NTP checkpoint)")
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared shards (their valid split); default: the validation "
                             "data recorded with A")
    parser.add_argument("--batch-size", type=int, default=defaults.FORWARD_BATCH_SIZE,
                        help="windows per forward pass")
    parser.add_argument("--no-tokenizer-check", action="store_true",
                        help="compare even when the tokenizers differ or are unknown")
    add_diagnostics_args(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser


def _pick_data(args: argparse.Namespace, hf_a: bool, hf_b: bool) -> Path:
    from nextlat_pt.eval.sources import recorded_valid

    if args.data is not None:
        return args.data
    data_a = recorded_valid(args.model_a, hf_a)
    data_b = recorded_valid(args.model_b, hf_b)
    if data_a is None:
        if data_b is None:
            raise UsageError("no validation data recorded with the models; pass --data SHARDS")
        return data_b
    if data_b is not None and data_b.resolve() != data_a.resolve():
        print(f"note: A and B were validated on different data; using A's ({data_a}) for "
              f"both (pass --data to choose)", flush=True)
    return data_a


def _check_tokenizers(args: argparse.Namespace, hf_a: bool, hf_b: bool) -> str | None:
    """Both models' tokenizer fingerprint (refuses two different or unknown ones)."""
    from nextlat_pt.eval.sources import tokenizer_fingerprint

    fa = tokenizer_fingerprint(args.model_a, hf_a)
    fb = tokenizer_fingerprint(args.model_b, hf_b)
    if args.no_tokenizer_check:
        return None
    if fa is None or fb is None:
        unknown = args.model_a if fa is None else args.model_b
        raise UsageError(f"the tokenizer of {unknown} is unknown (no tokenizer.model), so the "
                         f"two models may not read the same tokens; pass "
                         f"--no-tokenizer-check to compare anyway")
    if fa != fb:
        raise UsageError(f"{args.model_a} and {args.model_b} use different tokenizers "
                         f"({fa[:16]} vs {fb[:16]}); compare models trained with the same "
                         f"tokenizer")
    return fa


def run_compare(argv: list[str]) -> dict[str, Any]:
    """Parse `eval compare` arguments, run both models, print the table; returns the JSON."""
    return compare(build_parser().parse_args(argv))


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Run both models of parsed `eval compare` arguments, print the table; returns the JSON."""
    from nextlat_pt.eval.diagnostics import load_windows, run_diagnostics
    from nextlat_pt.eval.sources import check_model_dir, open_model

    check_diagnostics_args(args)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    hf_a, hf_b = check_model_dir(args.model_a), check_model_dir(args.model_b)
    fingerprint = _check_tokenizers(args, hf_a, hf_b)
    data = _pick_data(args, hf_a, hf_b)

    results: list[tuple[str, DiagnosticsResult]] = []
    windows = None
    for src, hf in ((args.model_a, hf_a), (args.model_b, hf_b)):
        model = open_model(src, hf)
        if windows is None:
            # B may have fewer positions than A: the windows must fit both.
            max_positions = model.max_positions
            other = _max_positions(args.model_b, hf_b)
            windows = load_windows(data, args.rank_sequences, args.rank_tokens,
                                   min(max_positions, other), fingerprint)
            if windows.shortfall():
                print(windows.shortfall(), flush=True)
        result = run_diagnostics(model, windows, args.probe_offsets,
                                 probe_steps=args.probe_steps, probe_lr=args.probe_lr,
                                 batch_size=args.batch_size)
        results.append((model.objective, result))
        print(f"{'AB'[len(results) - 1]}: {model.objective}, {model.description}: "
              f"effective rank {result.effective_rank:.2f}", flush=True)
        del model
    (label_a, a), (label_b, b) = results
    print(comparison_table(label_a, a, label_b, b), flush=True)
    out = {"data": str(data), "sequences": a.sequences, "tokens": a.tokens,
           "a": {"objective": label_a, **a.to_dict()},
           "b": {"objective": label_b, **b.to_dict()}}
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def _max_positions(src: Path, hf: bool) -> int:
    """Positions model B accepts, read from its config without loading it."""
    if hf:
        config = json.loads((src / "config.json").read_text())
        return int(config.get("max_position_embeddings") or 1 << 30)
    from nextlat_pt.convert.source import open_checkpoint

    return open_checkpoint(src, verify=False).config.max_position_embeddings


def comparison_table(label_a: str, a: DiagnosticsResult, label_b: str,
                     b: DiagnosticsResult) -> str:
    """One side-by-side table: A, B and B−A per metric."""
    rows: list[tuple[str, float, float, str]] = [
        ("next-token CE (nats)", a.ce, b.ce, ".4f"),
        ("LM-head next-token acc", a.next_token_accuracy, b.next_token_accuracy, ".4f"),
        ("effective rank", a.effective_rank, b.effective_rank, ".2f"),
    ]
    for pa, pb in zip(a.probes, b.probes):
        rows.append((f"probe acc, token t+{pa.offset}", pa.accuracy, pb.accuracy, ".4f"))
    head_a, head_b = f"A: {label_a}", f"B: {label_b}"
    width = max(14, len(head_a), len(head_b))
    lines = [f"comparison on the same {a.sequences} windows × {a.tokens} tokens of {a.data}",
             f"  A = {a.model}", f"  B = {b.model}",
             f"{'':26}{head_a:>{width}}  {head_b:>{width}}  {'B−A':>10}"]
    for name, va, vb, fmt in rows:
        lines.append(f"{name:26}{va:>{width}{fmt}}  {vb:>{width}{fmt}}  {vb - va:>+10{fmt}}")
    if a.probes:
        # The split and targets are the same for both models, so is the majority baseline.
        lines.append(f"(probes: softmax regression on frozen h_t, {a.probes[0].steps} AdamW "
                     f"steps, held-out windows; always answering the commonest token scores "
                     f"{a.probes[0].majority_accuracy:.4f} at t+1)")
    return "\n".join(lines)
