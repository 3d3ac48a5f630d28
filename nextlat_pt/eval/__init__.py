"""Evaluation: validation loss / perplexity on prepared shards (our checkpoints and HF
folders alike), latent diagnostics (effective rank, token-offset probes; `diagnostics/`,
`compare.py` for two models side by side) and lm-eval-harness on the export with tasks that
ship with the project.

Entry point: `eval_main(argv)` (`nextlat-pt eval`).
"""

from __future__ import annotations


def eval_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt eval ...` (see `nextlat_pt.eval.cli`)."""
    from nextlat_pt.eval.cli import eval_main as main

    return main(argv)


__all__ = ["eval_main"]
