"""The latent-diagnostics options, shared by `nextlat-pt eval` and `nextlat-pt eval compare`."""

from __future__ import annotations

import argparse

from nextlat_pt.subcommand import UsageError


def add_diagnostics_args(parser: argparse.ArgumentParser) -> None:
    """The options of the latent diagnostics (shared by `eval` and `eval compare`)."""
    from nextlat_pt.eval import defaults

    parser.add_argument("--rank-sequences", type=int, default=defaults.DIAG_SEQUENCES,
                        help="validation windows for the effective rank and the probes "
                             "(default: %(default)s, the paper's; fewer if the split is "
                             "smaller)")
    parser.add_argument("--rank-tokens", type=int, default=defaults.DIAG_TOKENS,
                        help="tokens per window (default: %(default)s; at most the split's "
                             "seq_len)")
    parser.add_argument("--probe-offsets", type=int, default=defaults.PROBE_OFFSETS,
                        help="linear probes for the tokens 1..K ahead (default: %(default)s; "
                             "0: none)")
    parser.add_argument("--probe-steps", type=int, default=defaults.PROBE_STEPS,
                        help="AdamW steps per probe (default: %(default)s)")
    parser.add_argument("--probe-lr", type=float, default=defaults.PROBE_LR,
                        help="probe learning rate (default: %(default)s)")


def check_diagnostics_args(args: argparse.Namespace) -> None:
    """Refuse diagnostics options out of range, before any model is loaded."""
    if args.rank_sequences < 2:
        raise UsageError("--rank-sequences must be at least 2 (the probes split by sequence)")
    if args.rank_tokens < 1 or args.probe_offsets < 0 or args.probe_steps < 1 \
            or not args.probe_lr > 0:
        raise UsageError("--rank-tokens and --probe-steps must be at least 1, --probe-offsets "
                         "at least 0 and --probe-lr positive")
