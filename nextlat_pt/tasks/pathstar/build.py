"""`make-task pathstar`: training and held-out graphs, the task tokenizer and prepared shards.

Output directory:
    task.json         the settings and counts
    graphs.jsonl      every graph as a prepare-data record (prompt, text, edges, start, goal,
                      path): the training graphs and the held-out ones
    test.jsonl        the held-out graphs alone (what `evaluate.py` scores)
    tokenizer/        tokenizer.model: one piece per node label and per separator
    shards/           `prepare-data --prompt-field prompt` output: train/ holds the training
                      graphs, valid/ exactly the held-out ones, the loss on the path only

Every graph is distinct (as a labelled graph, whatever its edge order), so a held-out graph is
never seen in training. The held-out graphs are the ones prepare-data's hash split sends to
valid/: each new graph goes to the side its text hashes to until that side is full, so the
split prepare-data makes of graphs.jsonl is exactly train / test.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nextlat_pt.tasks.pathstar.graph import check_family, random_graph
from nextlat_pt.tasks.pathstar.text import document, document_tokens, symbols
from nextlat_pt.tasks.symbols import train_symbol_tokenizer

# How many draws per wanted graph before the family is declared too small.
_DRAWS_PER_GRAPH = 20


@dataclass(frozen=True)
class PathStarSettings:
    """Everything the task's bytes depend on."""

    degree: int = 5
    length: int = 5
    nodes: int = 100
    num_graphs: int = 200_000
    test_graphs: int = 2_000
    seed: int = 0
    reverse: bool = False

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        check_family(self.degree, self.length, self.nodes)
        if self.num_graphs < 1 or self.test_graphs < 1:
            raise ValueError(f"--num-graphs {self.num_graphs} and --test-graphs "
                             f"{self.test_graphs} must be at least 1")

    @property
    def seq_len(self) -> int:
        """The model's sequence length: one document per window (see `make_pathstar`)."""
        return document_tokens(self.degree, self.length)

    @property
    def test_fraction(self) -> float:
        """prepare-data's --valid-fraction that routes the held-out graphs."""
        return self.test_graphs / (self.num_graphs + self.test_graphs)


def split_graphs(settings: PathStarSettings) -> tuple[list[dict], list[dict]]:
    """(all documents in write order, the held-out ones): distinct graphs, seeded."""
    from nextlat_pt.data.prepare import in_validation

    rng = random.Random(f"pathstar:{settings.seed}")
    want = {"train": settings.num_graphs, "test": settings.test_graphs}
    seen: set = set()
    docs: list[dict] = []
    test: list[dict] = []
    draws = _DRAWS_PER_GRAPH * (settings.num_graphs + settings.test_graphs)
    for _ in range(draws):
        if not any(want.values()):
            return docs, test
        graph = random_graph(rng, settings.degree, settings.length, settings.nodes)
        if graph.key() in seen:
            continue
        seen.add(graph.key())
        doc = document(graph, settings.reverse)
        side = ("test" if in_validation(doc["prompt"] + doc["text"], settings.seed,
                                        settings.test_fraction) else "train")
        if want[side]:
            want[side] -= 1
            docs.append(doc)
            if side == "test":
                test.append(doc)
    raise ValueError(
        f"G({settings.degree},{settings.length}) over {settings.nodes} labels gave only "
        f"{len(seen)} distinct graphs in {draws} draws, too few for --num-graphs "
        f"{settings.num_graphs} + --test-graphs {settings.test_graphs}; raise --nodes or ask "
        "for fewer graphs")


def _write_jsonl(path: Path, docs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, separators=(",", ":")) + "\n")


def make_pathstar(output: str | Path, settings: PathStarSettings,
                  log: Callable[[str], None] = print) -> dict:
    """Write the task into `output` (see the module docstring); returns task.json's content."""
    from nextlat_pt.data.prepare import prepare_data

    settings.check()
    docs, test = split_graphs(settings)  # before anything is written: a too-small family
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "graphs.jsonl", docs)
    _write_jsonl(out / "test.jsonl", test)
    sample = [d["prompt"] + d["text"] for d in docs[:2000]]
    tok_path = train_symbol_tokenizer(symbols(settings.nodes), sample, out / "tokenizer",
                                      "the graphs")
    log(f"G({settings.degree},{settings.length}) over {settings.nodes} labels (seed "
        f"{settings.seed}{', reversed paths' if settings.reverse else ''}): "
        f"{settings.num_graphs} training + {settings.test_graphs} held-out graphs; "
        f"tokenizer {tok_path}")
    # seq_len = one document with its EOS: every window then holds exactly one graph.
    summary = prepare_data([out / "graphs.jsonl"], tok_path.parent, settings.seq_len,
                           out / "shards", prompt_field="prompt",
                           valid_fraction=settings.test_fraction, seed=settings.seed,
                           workers=1, progress=False, log=log)
    counts = {k: v["documents"] for k, v in summary.splits.items()}
    if counts != {"train": settings.num_graphs, "valid": settings.test_graphs}:
        raise RuntimeError(f"prepare-data split the graphs {counts}, not as routed")
    info = {"task": "pathstar", "settings": asdict(settings), "seq_len": settings.seq_len,
            "splits": {k: {"samples": v["samples"], "documents": v["documents"],
                           "tokens": v["tokens"]} for k, v in summary.splits.items()}}
    (out / "task.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info
