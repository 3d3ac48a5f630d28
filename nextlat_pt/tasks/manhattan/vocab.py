"""The task's tokenizer: one sentencepiece piece per intersection and per direction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nextlat_pt.data.tokenizer import Tokenizer, train_sentencepiece_on
from nextlat_pt.tasks.manhattan.generate import node_token, symbols
from nextlat_pt.tasks.manhattan.graph import DIRECTIONS, City

# sentencepiece's fixed pieces: <unk> <s> </s> <pad>, "\n", and 256 byte-fallback pieces.
_BASE_PIECES = 4 + 1 + 256


def train_task_tokenizer(city: City, sample_docs: Sequence[str], output_dir: Path) -> Path:
    """Train the tokenizer whose pieces are exactly the task symbols (plus sentencepiece's own).

    Every symbol is a user-defined piece, so the walk text leaves nothing for BPE to merge and
    the vocabulary is the smallest sentencepiece accepts. One thread: the model bytes (and so
    the shards' fingerprint) are then the same on every machine.
    """
    syms = symbols(city)
    path = train_sentencepiece_on(lambda: iter(sample_docs), output_dir,
                                  _BASE_PIECES + len(syms), num_threads=1,
                                  user_defined_symbols=syms, inputs_desc="the walks")
    TaskVocab(Tokenizer.load(path), city)  # refuses a tokenizer that splits a symbol
    return path


class TaskVocab:
    """Token ids of the task symbols under a tokenizer, checked to be one token each."""

    def __init__(self, tokenizer: Tokenizer, city: City) -> None:
        """Map every symbol to its id; ValueError if one is not exactly one token."""
        self.tokenizer = tokenizer
        self.city = city
        ids = {}
        for sym in symbols(city):
            enc = tokenizer.encode(sym)
            if len(enc) != 1:
                raise ValueError(f"task symbol {sym!r} is {len(enc)} tokens under {tokenizer}; "
                                 "re-create the task so its tokenizer has one piece per symbol")
            ids[sym] = enc[0]
        self.node_ids = [ids[node_token(i)] for i in range(city.num_nodes)]
        self.direction_ids = {d: ids[d] for d in DIRECTIONS}
        self.id_to_direction = {v: d for d, v in self.direction_ids.items()}

    def encode_walk(self, start: int, moves: Sequence[str]) -> list[int]:
        """Ids of a walk: its start token, then one id per move."""
        return [self.node_ids[start], *(self.direction_ids[m] for m in moves)]
