"""The hidden "city" of the Manhattan-style world-modelling task: a grid of intersections.

Intersection `i` sits at (x, y) = (i % width, i // width). Each street segment between
neighbouring intersections is two-way, one-way or removed; the city is generated from a seed
and is always strongly connected, so a walk can reach every intersection from every other.
A move is a compass direction (N: y+1, E: x+1, S: y-1, W: x-1); it is legal from an
intersection when a street leads that way. The world state a model has to track is the current
intersection, which only the start token and the integrated moves reveal.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DIRECTIONS = ("N", "E", "S", "W")
_OFFSETS = {"N": (0, 1), "E": (1, 0), "S": (0, -1), "W": (-1, 0)}


class IllegalMove(ValueError):
    """A move along a street that does not exist (or runs the other way)."""


@dataclass(frozen=True)
class City:
    """A directed grid graph: `moves[i]` maps each legal direction from `i` to its target."""

    width: int
    height: int
    moves: tuple[dict[str, int], ...]
    seed: int = 0

    @property
    def num_nodes(self) -> int:
        """Number of intersections."""
        return self.width * self.height

    def coords(self, node: int) -> tuple[int, int]:
        """(x, y) of an intersection."""
        return node % self.width, node // self.width

    def legal_moves(self, node: int) -> list[str]:
        """The directions one may drive from `node`, in N, E, S, W order."""
        return [d for d in DIRECTIONS if d in self.moves[node]]

    def step(self, node: int, move: str) -> int:
        """The intersection reached by `move` from `node`; IllegalMove if there is no street."""
        try:
            return self.moves[node][move]
        except KeyError:
            raise IllegalMove(f"no street {move} from intersection {node}") from None

    def states(self, start: int, moves: Sequence[str]) -> list[int]:
        """The intersection after each prefix of `moves`: [start, after 1 move, ..., after all]."""
        out = [start]
        for move in moves:
            out.append(self.step(out[-1], move))
        return out

    def is_strongly_connected(self) -> bool:
        """Whether every intersection reaches every other along legal moves."""
        return _reaches_all(self.moves, 0) and _reaches_all(_reverse(self.moves), 0)

    def to_json(self) -> dict:
        """A JSON-able description (`from_json` restores it exactly)."""
        return {"width": self.width, "height": self.height, "seed": self.seed,
                "moves": [dict(m) for m in self.moves]}

    @classmethod
    def from_json(cls, data: dict) -> City:
        """Inverse of `to_json`."""
        moves = tuple({str(d): int(v) for d, v in m.items()} for m in data["moves"])
        city = cls(int(data["width"]), int(data["height"]), moves, int(data.get("seed", 0)))
        if len(moves) != city.num_nodes:
            raise ValueError(f"city has {len(moves)} move tables for {city.num_nodes} nodes")
        return city

    def save(self, path: str | Path) -> None:
        """Write the city as JSON."""
        Path(path).write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> City:
        """Read a city written by `save`."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def _reaches_all(moves: Sequence[dict[str, int]], source: int) -> bool:
    seen = {source}
    queue = deque([source])
    while queue:
        for nxt in moves[queue.popleft()].values():
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return len(seen) == len(moves)


def _reverse(moves: Sequence[dict[str, int]]) -> list[dict[str, int]]:
    rev: list[dict[str, int]] = [{} for _ in moves]
    for u, table in enumerate(moves):
        for d, v in table.items():
            rev[v][d] = u  # the label is irrelevant for reachability
    return rev


def generate_city(width: int, height: int | None = None, seed: int = 0,
                  remove_fraction: float = 0.25, oneway_fraction: float = 0.35) -> City:
    """A strongly connected city grown from the full two-way grid, determined by `seed`.

    Segments are visited in a seeded random order; each is tried as removed (probability
    `remove_fraction`) or one-way in a random direction (`oneway_fraction`), and a change is
    kept only if the city stays strongly connected. Irregular streets are what makes the
    position hard to infer: on a full grid only the net displacement matters.
    """
    height = width if height is None else height
    if width < 2 or height < 2:
        raise ValueError(f"a city needs at least 2x2 intersections, got {width}x{height}")
    if not (0 <= remove_fraction and 0 <= oneway_fraction and remove_fraction + oneway_fraction
            <= 1):
        raise ValueError("remove_fraction and oneway_fraction must be >= 0 and sum to <= 1")
    rng = random.Random(seed)
    moves: list[dict[str, int]] = [{} for _ in range(width * height)]
    segments: list[tuple[int, str, int, str]] = []
    for node in range(width * height):
        x, y = node % width, node // width
        for d, back in (("N", "S"), ("E", "W")):
            dx, dy = _OFFSETS[d]
            if x + dx < width and y + dy < height:
                other = (y + dy) * width + x + dx
                moves[node][d] = other
                moves[other][back] = node
                segments.append((node, d, other, back))
    rng.shuffle(segments)
    for a, d, b, back in segments:
        r = rng.random()
        if r < remove_fraction:
            drop = [(a, d), (b, back)]
        elif r < remove_fraction + oneway_fraction:
            drop = [(a, d)] if rng.random() < 0.5 else [(b, back)]
        else:
            continue
        saved = [(n, k, moves[n].pop(k)) for n, k in drop]
        if not (_reaches_all(moves, 0) and _reaches_all(_reverse(moves), 0)):
            for n, k, v in saved:
                moves[n][k] = v
    return City(width, height, tuple(moves), seed)
