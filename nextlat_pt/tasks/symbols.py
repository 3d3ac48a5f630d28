"""Tokenizers whose pieces are exactly a task's symbols: one token per symbol.

The synthetic tasks write their documents as strings of symbols with no whitespace (an
intersection and directions, nodes and separators). Each symbol is a user-defined
sentencepiece piece, so the text leaves nothing for BPE to merge, token t of a document is
symbol t, and the vocabulary is the smallest sentencepiece accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nextlat_pt.data.tokenizer import Tokenizer, train_sentencepiece_on

# sentencepiece's fixed pieces: <unk> <s> </s> <pad>, "\n", and 256 byte-fallback pieces.
_BASE_PIECES = 4 + 1 + 256


def train_symbol_tokenizer(syms: Sequence[str], sample_docs: Sequence[str], output_dir: Path,
                           desc: str) -> Path:
    """Train the tokenizer whose pieces are `syms` (plus sentencepiece's own); its path.

    One thread: the model bytes (and so the shards' fingerprint) are then the same on every
    machine. Refuses (ValueError) a result that splits a symbol.
    """
    path = train_sentencepiece_on(lambda: iter(sample_docs), output_dir,
                                  _BASE_PIECES + len(syms), num_threads=1,
                                  user_defined_symbols=list(syms), inputs_desc=desc)
    symbol_ids(Tokenizer.load(path), syms)
    return path


def symbol_ids(tokenizer: Tokenizer, syms: Sequence[str]) -> dict[str, int]:
    """symbol -> its token id; ValueError if a symbol is not exactly one token."""
    ids = {}
    for sym in syms:
        enc = tokenizer.encode(sym)
        if len(enc) != 1:
            raise ValueError(f"task symbol {sym!r} is {len(enc)} tokens under {tokenizer}; "
                             "re-create the task so its tokenizer has one piece per symbol")
        ids[sym] = enc[0]
    return ids
