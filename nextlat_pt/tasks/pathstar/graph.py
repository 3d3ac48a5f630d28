"""Path-star graphs G(D, L) (Bachmann & Nagarajan, "The pitfalls of next-token prediction").

A path-star graph has a centre (the start) and D arms, each a chain of L − 1 further nodes
leading away from it; the goal is the last node of one arm. Node labels are D·(L − 1) + 1
distinct numbers drawn from 0 … N − 1, so every graph is labelled afresh and the model must
read the edges to find the way. Edges point away from the start, so the start→goal path is
unique: the goal's arm, L nodes from start to goal.

Next-token training learns the "Clever Hans" shortcut: given the path so far, the next node is
the child of the last one, which the edge list answers; only the first step after the start (path
position 1) needs planning, and there a shortcut-trained model guesses among the D arms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class StarGraph:
    """One task instance: the directed edges in written (shuffled) order, start, goal, path."""

    edges: tuple[tuple[int, int], ...]
    start: int
    goal: int
    path: tuple[int, ...]

    def key(self) -> tuple:
        """What identifies the graph whatever order its edges are written in."""
        return frozenset(self.edges), self.start, self.goal

    def to_json(self) -> dict:
        """JSON-able fields (`from_json` restores them)."""
        return {"edges": [list(e) for e in self.edges], "start": self.start, "goal": self.goal,
                "path": list(self.path)}

    @classmethod
    def from_json(cls, data: dict) -> StarGraph:
        """Inverse of `to_json`."""
        return cls(tuple((int(u), int(v)) for u, v in data["edges"]), int(data["start"]),
                   int(data["goal"]), tuple(int(n) for n in data["path"]))


def nodes_needed(degree: int, length: int) -> int:
    """How many distinct labels one G(degree, length) graph uses."""
    return degree * (length - 1) + 1


def check_family(degree: int, length: int, nodes: int) -> None:
    """ValueError naming the bad setting of a G(degree, length) family over `nodes` labels."""
    if degree < 2:
        raise ValueError(f"--degree {degree}: a path-star needs at least 2 arms (a choice)")
    if length < 2:
        raise ValueError(f"--length {length}: a path needs at least 2 nodes (start and goal)")
    need = nodes_needed(degree, length)
    if nodes < need:
        raise ValueError(f"--nodes {nodes}: G({degree},{length}) has {need} nodes, so it needs "
                         f"at least {need} labels; raise --nodes")


def random_graph(rng: random.Random, degree: int, length: int, nodes: int) -> StarGraph:
    """A uniformly labelled G(degree, length) with a uniform goal arm and shuffled edges."""
    labels = rng.sample(range(nodes), nodes_needed(degree, length))
    start, rest = labels[0], labels[1:]
    arms = [rest[a * (length - 1):(a + 1) * (length - 1)] for a in range(degree)]
    edges = [(chain[i], chain[i + 1]) for arm in arms for chain in [[start, *arm]]
             for i in range(length - 1)]
    rng.shuffle(edges)
    goal_arm = arms[rng.randrange(degree)]
    return StarGraph(tuple(edges), start, goal_arm[-1], (start, *goal_arm))


def find_path(edges: tuple[tuple[int, int], ...] | list, start: int, goal: int
              ) -> list[list[int]]:
    """Every directed path from `start` to `goal` along `edges` (depth-first; no revisits)."""
    children: dict[int, list[int]] = {}
    for u, v in edges:
        children.setdefault(u, []).append(v)
    found: list[list[int]] = []
    stack = [[start]]
    while stack:
        path = stack.pop()
        if path[-1] == goal:
            found.append(path)
            continue
        stack.extend(path + [c] for c in children.get(path[-1], []) if c not in path)
    return found
