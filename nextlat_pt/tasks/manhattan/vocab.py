"""The task's tokenizer: one sentencepiece piece per intersection and per direction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.tasks.manhattan.generate import node_token, symbols
from nextlat_pt.tasks.manhattan.graph import DIRECTIONS, City
from nextlat_pt.tasks.symbols import symbol_ids, train_symbol_tokenizer


def train_task_tokenizer(city: City, sample_docs: Sequence[str], output_dir: Path) -> Path:
    """Train the tokenizer whose pieces are exactly the task symbols (`tasks/symbols.py`)."""
    return train_symbol_tokenizer(symbols(city), sample_docs, output_dir, "the walks")


class TaskVocab:
    """Token ids of the task symbols under a tokenizer, checked to be one token each."""

    def __init__(self, tokenizer: Tokenizer, city: City) -> None:
        """Map every symbol to its id; ValueError if one is not exactly one token."""
        self.tokenizer = tokenizer
        self.city = city
        ids = symbol_ids(tokenizer, symbols(city))
        self.node_ids = [ids[node_token(i)] for i in range(city.num_nodes)]
        self.direction_ids = {d: ids[d] for d in DIRECTIONS}
        self.id_to_direction = {v: d for d, v in self.direction_ids.items()}

    def encode_walk(self, start: int, moves: Sequence[str]) -> list[int]:
        """Ids of a walk: its start token, then one id per move."""
        return [self.node_ids[start], *(self.direction_ids[m] for m in moves)]
