"""Text generation: plain decoding with a KV cache and NextLat self-speculative decoding.

Entry point: `generate_main(argv)` (`nextlat-pt generate`). The library pieces:
`weights.load_weights` (checkpoint or export -> tensors), `decoder.LlamaDecoder` (our
inference decoder and its ragged KV cache), `drafter` (ψ), `sampling`, `policies` (draft
lengths), `speculative.generate` (the loop) and `hf.speculative_generate_hf` (the same loop
on a transformers model).
"""

from __future__ import annotations


def generate_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt generate ...` (see `nextlat_pt.generate.cli`)."""
    from nextlat_pt.generate.cli import generate_main as main

    return main(argv)


__all__ = ["generate_main"]
