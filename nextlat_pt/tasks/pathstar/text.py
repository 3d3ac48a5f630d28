"""Path-star graphs as text, in Bachmann & Nagarajan's format, and their token ids.

    prompt:  u,v|u,v|...|u,v/s,g=        the shuffled edge list, then start and goal
    target:  s,p1,p2,...,g                the path (goal back to start with `reverse`)

Every node label and every separator is one symbol and, under the task tokenizer, one token, so
the target's node k is token 2k of the target. Training computes the loss on the target only
(the prompt is `prepare-data --prompt-field prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence

from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.tasks.pathstar.graph import StarGraph
from nextlat_pt.tasks.symbols import symbol_ids

SEPARATORS = (",", "|", "/", "=")


def symbols(nodes: int) -> list[str]:
    """Every task symbol: the node labels 0 … nodes − 1, then the separators."""
    return [str(n) for n in range(nodes)] + list(SEPARATORS)


def prompt_symbols(graph: StarGraph) -> list[str]:
    """The prompt as symbols: edges `u , v` joined by `|`, then `/ s , g =`."""
    out: list[str] = []
    for i, (u, v) in enumerate(graph.edges):
        out += ([] if i == 0 else ["|"]) + [str(u), ",", str(v)]
    return out + ["/", str(graph.start), ",", str(graph.goal), "="]


def target_nodes(graph: StarGraph, reverse: bool = False) -> tuple[int, ...]:
    """The path the model must write: start → goal, or goal → start with `reverse`."""
    return graph.path[::-1] if reverse else graph.path


def target_symbols(graph: StarGraph, reverse: bool = False) -> list[str]:
    """The target as symbols: the path's nodes joined by `,`."""
    out: list[str] = []
    for k, node in enumerate(target_nodes(graph, reverse)):
        out += ([] if k == 0 else [","]) + [str(node)]
    return out


def document(graph: StarGraph, reverse: bool = False) -> dict:
    """The prepare-data record of a graph: prompt and target text plus the graph itself."""
    return {"prompt": "".join(prompt_symbols(graph)),
            "text": "".join(target_symbols(graph, reverse)), **graph.to_json()}


def document_tokens(degree: int, length: int) -> int:
    """Tokens of one document (prompt, target and EOS): the same for every graph of G(D, L)."""
    edges = degree * (length - 1)
    return (4 * edges - 1) + 5 + (2 * length - 1) + 1


class PathStarVocab:
    """Token ids of the task symbols under a tokenizer, checked to be one token each."""

    def __init__(self, tokenizer: Tokenizer, nodes: int) -> None:
        """Map every symbol to its id; ValueError if one is not exactly one token."""
        self.tokenizer = tokenizer
        self.ids = symbol_ids(tokenizer, symbols(nodes))
        self.node_of = {self.ids[str(n)]: n for n in range(nodes)}

    def encode(self, syms: Sequence[str]) -> list[int]:
        """Ids of a symbol sequence."""
        return [self.ids[s] for s in syms]
