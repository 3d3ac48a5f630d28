"""The Path-Star task: graphs whose path is unique, held-out graphs never trained on, the
prompt/target layout in the shards, and the accuracy metrics on oracle models whose accuracy
is known (one that plans, one that takes the next-token shortcut)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.tasks.pathstar.build import PathStarSettings, make_pathstar, split_graphs
from nextlat_pt.tasks.pathstar.evaluate import evaluate_model, load_test_graphs
from nextlat_pt.tasks.pathstar.graph import StarGraph, find_path, random_graph
from nextlat_pt.tasks.pathstar.text import PathStarVocab, prompt_symbols, target_symbols


@pytest.mark.parametrize("degree,length,nodes", [(2, 10, 100), (5, 5, 100), (3, 2, 4),
                                                 (7, 7, 43)])
def test_every_path_is_the_unique_start_to_goal_path(degree, length, nodes):
    rng = random.Random(0)
    for _ in range(200):
        g = random_graph(rng, degree, length, nodes)
        assert find_path(g.edges, g.start, g.goal) == [list(g.path)]
        assert len(g.path) == length and g.path[0] == g.start and g.path[-1] == g.goal
        labels = {n for e in g.edges for n in e}
        assert len(labels) == degree * (length - 1) + 1 and max(labels) < nodes
        assert sum(u == g.start for u, _ in g.edges) == degree  # D arms leave the start


def test_find_path_sees_every_route():
    edges = [(0, 1), (1, 3), (0, 2), (2, 3)]
    assert sorted(find_path(edges, 0, 3)) == [[0, 1, 3], [0, 2, 3]]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("pathstar")
    settings = PathStarSettings(degree=3, length=4, nodes=30, num_graphs=300, test_graphs=40,
                                seed=3)
    info = make_pathstar(out, settings, log=lambda m: None)
    return out, settings, info


def _records(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_held_out_graphs_are_disjoint_from_training_graphs(task):
    out, settings, info = task
    graphs = [StarGraph.from_json(r) for r in _records(out / "graphs.jsonl")]
    test = [StarGraph.from_json(r) for r in _records(out / "test.jsonl")]
    test_keys = {g.key() for g in test}
    train = [g for g in graphs if g.key() not in test_keys]
    assert len(test) == settings.test_graphs and len(train) == settings.num_graphs
    assert len({g.key() for g in graphs}) == len(graphs)  # no graph twice, in any edge order
    assert info["splits"]["valid"]["documents"] == settings.test_graphs


def test_shards_hold_prompt_then_path_with_the_loss_on_the_path(task):
    out, settings, info = task
    tok = Tokenizer.load(out / "tokenizer" / "tokenizer.model")
    vocab = PathStarVocab(tok, settings.nodes)
    graphs = [StarGraph.from_json(r) for r in _records(out / "graphs.jsonl")]
    test_keys = {StarGraph.from_json(r).key() for r in _records(out / "test.jsonl")}
    for split, wanted in (("train", [g for g in graphs if g.key() not in test_keys]),
                          ("valid", [g for g in graphs if g.key() in test_keys])):
        ds = open_dataset(out / "shards", split)
        assert ds.seq_len == info["seq_len"] and len(ds) == len(wanted) - 1
        for i in range(len(ds)):
            sample = ds.get(i)
            prompt = vocab.encode(prompt_symbols(wanted[i]))
            target = vocab.encode(target_symbols(wanted[i]))
            doc = prompt + target + [tok.eos_id]
            assert sample["tokens"][:-1].tolist() == doc  # one graph per window
            assert sample["loss_mask"][:-1].tolist() == [0] * len(prompt) + [1] * (
                len(target) + 1)
            assert sample["loss_mask"][-1] == 0  # the next graph's first token


def test_reverse_writes_the_path_goal_to_start():
    settings = PathStarSettings(degree=2, length=5, nodes=20, num_graphs=20, test_graphs=5,
                                reverse=True)
    docs, _ = split_graphs(settings)
    for doc in docs:
        path = [int(n) for n in doc["text"].split(",")]
        assert path == doc["path"][::-1] and path[0] == doc["goal"]


def test_a_family_too_small_for_the_graphs_asked_is_refused_before_writing(tmp_path):
    # G(2,2) over 3 labels has 3 starts x 1 pairing of arms x 2 goals = 6 distinct graphs.
    settings = PathStarSettings(degree=2, length=2, nodes=3, num_graphs=10, test_graphs=2)
    with pytest.raises(ValueError, match="too few for --num-graphs 10"):
        make_pathstar(tmp_path / "out", settings, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--nodes 5: G.2,4. has 7 nodes"):
        PathStarSettings(degree=2, length=4, nodes=5).check()
    with pytest.raises(ValueError, match="--degree 1"):
        PathStarSettings(degree=1).check()


class OracleModel:
    """Logits that put all mass on one next token, from reading the graph in the ids.

    `shortcut=False` plans: it writes the true path. `shortcut=True` is the "Clever Hans"
    model: after the start it picks one of the start's children uniformly (both get the
    same logit), and from there follows the edges, which is all next-token training teaches.
    """

    def __init__(self, vocab: PathStarVocab, vocab_size: int, shortcut: bool) -> None:
        self.vocab = vocab
        self.vocab_size = vocab_size
        self.shortcut = shortcut
        self.sym = {i: s for s, i in vocab.ids.items()}

    def _next(self, row: list[str]) -> list[str]:
        eq = row.index("=")
        edge_syms = "".join(row[:eq]).split("/")[0].split("|")
        edges = [tuple(int(x) for x in e.split(",")) for e in edge_syms]
        start, goal = (int(x) for x in "".join(row[:eq]).split("/")[1].split(","))
        out = row[eq + 1:]
        if not out:
            return [str(start)]
        if out[-1] != ",":
            return [","]
        nodes = [int(x) for x in out[::2]]
        if len(nodes) == 1 and self.shortcut:
            return [str(v) for u, v in edges if u == start]
        path = find_path(edges, start, goal)[0]
        nxt = [v for u, v in edges if u == nodes[-1]] if self.shortcut else [path[len(nodes)]]
        return [str(n) for n in nxt] or [","]

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.full((*ids.shape, self.vocab_size), -30.0)
        for b, row in enumerate(ids.tolist()):
            syms = [self.sym.get(i, "?") for i in row]
            for t in range(syms.index("=") if "=" in syms else 0, len(syms)):
                for s in self._next(syms[:t + 1]):
                    out[b, t, self.vocab.ids[s]] = 0.0
        return out


def test_a_planning_oracle_scores_100_and_a_shortcut_oracle_scores_1_over_d(task):
    out, settings, _ = task
    tok = Tokenizer.load(out / "tokenizer" / "tokenizer.model")
    vocab = PathStarVocab(tok, settings.nodes)
    records = load_test_graphs(out)
    planner = evaluate_model(OracleModel(vocab, tok.vocab_size, shortcut=False), records, vocab)
    assert planner["exact_match_sampled"] == planner["exact_match_greedy"] == 1.0
    assert planner["per_position_teacher_forced"] == [1.0] * settings.length

    many = records * 10  # 400 sampled paths: 1/3 ± 0.07 at three standard deviations
    hans = evaluate_model(OracleModel(vocab, tok.vocab_size, shortcut=True), many, vocab,
                          seed=1)
    assert abs(hans["exact_match_sampled"] - 1 / settings.degree) < 0.07
    tf = hans["per_position_teacher_forced"]
    assert tf[0] == 1.0 and tf[2:] == [1.0] * (settings.length - 2)
    assert tf[1] < 0.6  # argmax among D tied children: right only when the goal's comes first
    sampled = hans["per_position_sampled"]
    assert sampled[0] == 1.0 and abs(sampled[1] - 1 / settings.degree) < 0.07
    assert sampled[-1] == pytest.approx(hans["exact_match_sampled"])
    assert hans["chance_position_1"] == pytest.approx(1 / 3)
