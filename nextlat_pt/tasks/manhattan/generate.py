"""Random walks on a city, written as text documents: a start token, then direction tokens.

A walk `[37]NEESW` starts at intersection 37 and drives north, east, east, south, west, each
move chosen uniformly among the legal ones. No whitespace: with the task tokenizer every
bracketed intersection and every direction letter is exactly one token, so token t of a walk
is move t and the model's hidden state at token t should encode the intersection reached.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nextlat_pt.tasks.manhattan.graph import DIRECTIONS, City


def node_token(node: int) -> str:
    """The start token of intersection `node`."""
    return f"[{node}]"


def symbols(city: City) -> list[str]:
    """Every task symbol: the intersections' start tokens, then the four directions."""
    return [node_token(i) for i in range(city.num_nodes)] + list(DIRECTIONS)


@dataclass(frozen=True)
class Walk:
    """A start intersection and the moves driven from it."""

    start: int
    moves: tuple[str, ...]

    def text(self) -> str:
        """The document: start token followed by the move letters."""
        return node_token(self.start) + "".join(self.moves)


_WALK = re.compile(r"\[(\d+)\]([NESW]*)")


def parse_walk(text: str) -> Walk:
    """Inverse of `Walk.text`; ValueError for anything else."""
    match = _WALK.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a walk document: {text[:40]!r}")
    return Walk(int(match.group(1)), tuple(match.group(2)))


def random_walk(city: City, rng: random.Random, length: int) -> Walk:
    """A walk of `length` moves from a uniform start, each move uniform over the legal ones."""
    node = rng.randrange(city.num_nodes)
    start = node
    moves = []
    for _ in range(length):
        move = rng.choice(city.legal_moves(node))
        moves.append(move)
        node = city.moves[node][move]
    return Walk(start, tuple(moves))


def random_walks(city: City, count: int, length: int, seed: int | str) -> Iterator[Walk]:
    """`count` walks determined by (city, length, seed)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield random_walk(city, rng, length)


def write_walks(path: str | Path, walks: Iterator[Walk]) -> int:
    """Write one walk per line (the `--txt-split line` layout); returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for walk in walks:
            f.write(walk.text() + "\n")
            n += 1
    return n
