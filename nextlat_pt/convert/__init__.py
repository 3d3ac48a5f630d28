"""Checkpoint conversion: nextlat_pt <-> Hugging Face `LlamaForCausalLM` (+ ψ beside it).

Entry point: `convert_main(argv)` (`nextlat-pt convert`); the library functions are
`to_hf.export_to_hf` and `to_nextlat.import_from_hf`.
"""

from __future__ import annotations


def convert_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt convert ...` (see `nextlat_pt.convert.cli`)."""
    from nextlat_pt.convert.cli import convert_main as main

    return main(argv)


__all__ = ["convert_main"]
