"""The Manhattan world-modelling task: city generation, state tracking, walks, tokenizer and
the task metrics (on an oracle model that knows the city and on models that do not)."""

from __future__ import annotations

import random

import pytest
import torch

from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.tasks.manhattan.generate import (
    Walk,
    node_token,
    parse_walk,
    random_walks,
    symbols,
)
from nextlat_pt.tasks.manhattan.graph import DIRECTIONS, City, IllegalMove, generate_city
from nextlat_pt.tasks.manhattan.metrics import encode_walks, evaluate_model
from nextlat_pt.tasks.manhattan.vocab import TaskVocab, train_task_tokenizer


@pytest.mark.parametrize("width,seed", [(2, 0), (5, 1), (8, 2), (10, 3)])
def test_city_is_strongly_connected_with_irregular_streets(width, seed):
    city = generate_city(width, seed=seed)
    assert city.is_strongly_connected()
    full_grid_moves = 4 * width * (width - 1)  # two directions per segment
    moves = sum(len(m) for m in city.moves)
    if width >= 5:  # some streets were removed or made one-way
        assert moves < full_grid_moves * 0.85
    one_way = sum(1 for u, m in enumerate(city.moves) for v in m.values()
                  if u not in city.moves[v].values())
    assert width < 5 or one_way > 0


def test_disconnected_city_is_detected():
    city = generate_city(3, seed=0)
    cut = [dict(m) for m in city.moves]
    for d in list(cut[0]):
        target = cut[0].pop(d)
        cut[target] = {k: v for k, v in cut[target].items() if v != 0}
    assert not City(3, 3, tuple(cut)).is_strongly_connected()


def test_city_is_a_function_of_its_seed_and_round_trips(tmp_path):
    a, b = generate_city(6, seed=7), generate_city(6, seed=7)
    assert a.to_json() == b.to_json()
    assert generate_city(6, seed=8).to_json() != a.to_json()
    a.save(tmp_path / "city.json")
    assert City.load(tmp_path / "city.json") == a


def test_moves_follow_the_compass_and_illegal_moves_are_refused():
    city = generate_city(6, seed=3)
    offsets = {"N": (0, 1), "E": (1, 0), "S": (0, -1), "W": (-1, 0)}
    for node in range(city.num_nodes):
        x, y = city.coords(node)
        for d in DIRECTIONS:
            if d in city.legal_moves(node):
                assert city.coords(city.step(node, d)) == (x + offsets[d][0], y + offsets[d][1])
            else:
                with pytest.raises(IllegalMove):
                    city.step(node, d)
    with pytest.raises(ValueError, match="at least 2x2"):
        generate_city(1)


def test_states_track_the_walk():
    city = generate_city(5, seed=4)
    walk = next(random_walks(city, 1, 30, seed=1))
    states = city.states(walk.start, walk.moves)
    assert len(states) == 31 and states[0] == walk.start
    node = walk.start
    for move, state in zip(walk.moves, states[1:]):
        assert move in city.legal_moves(node)
        node = city.moves[node][move]
        assert state == node


def test_walks_are_deterministic_and_parse_back():
    city = generate_city(5, seed=4)
    a = list(random_walks(city, 20, 15, seed="s"))
    assert a == list(random_walks(city, 20, 15, seed="s"))
    assert a != list(random_walks(city, 20, 15, seed="t"))
    for walk in a:
        assert parse_walk(walk.text()) == walk
        city.states(walk.start, walk.moves)  # every move legal (raises otherwise)
    with pytest.raises(ValueError, match="not a walk"):
        parse_walk("[3]NX")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 4x4 city, its tokenizer and vocabulary."""
    city = generate_city(4, seed=5)
    docs = [w.text() for w in random_walks(city, 200, 12, seed=0)]
    path = train_task_tokenizer(city, docs, tmp_path_factory.mktemp("tok"))
    tok = Tokenizer.load(path)
    return city, tok, TaskVocab(tok, city)


def test_every_symbol_is_one_token_and_walks_round_trip(task):
    city, tok, vocab = task
    assert len(set(vocab.node_ids) | set(vocab.direction_ids.values())) == len(symbols(city))
    walk = next(random_walks(city, 1, 25, seed=9))
    ids = tok.encode(walk.text())
    assert ids == vocab.encode_walk(walk.start, walk.moves)
    assert len(ids) == 26 and tok.decode(ids) == walk.text()
    assert tok.encode(node_token(15)) == [vocab.node_ids[15]]


class _Oracle:
    """Knows the city: puts its mass on the legal moves of the true current intersection,
    and its hidden state is the one-hot of that intersection."""

    def __init__(self, vocab: TaskVocab, vocab_size: int, legal_only: bool = True) -> None:
        self.vocab, self.v, self.legal_only = vocab, vocab_size, legal_only

    def logits_and_hidden(self, ids):
        city = self.vocab.city
        start_of = {t: i for i, t in enumerate(self.vocab.node_ids)}
        logits = torch.full((*ids.shape, self.v), -30.0)
        hidden = torch.zeros(*ids.shape, city.num_nodes)
        for b, row in enumerate(ids.tolist()):
            node = start_of[row[0]]
            for t, tok in enumerate(row):
                if t:  # after an illegal sampled move the position stays (it is lost anyway)
                    node = city.moves[node].get(self.vocab.id_to_direction.get(tok), node)
                hidden[b, t, node] = 1.0
                for move in (city.legal_moves(node) if self.legal_only else DIRECTIONS):
                    logits[b, t, self.vocab.direction_ids[move]] = 0.0
        return logits, hidden


class _Blind:
    """Ignores the input: always the same move distribution and random hidden states."""

    def __init__(self, vocab: TaskVocab, vocab_size: int) -> None:
        self.vocab, self.v = vocab, vocab_size
        self.gen = torch.Generator().manual_seed(0)

    def logits_and_hidden(self, ids):
        logits = torch.full((*ids.shape, self.v), -30.0)
        logits[..., self.vocab.direction_ids["N"]] = 0.0
        return logits, torch.randn(*ids.shape, 16, generator=self.gen)


def _walks(city: City, n: int = 24, length: int = 12) -> list[Walk]:
    return list(random_walks(city, n, length, seed=random.Random(3).random()))


def test_metrics_of_an_oracle_are_perfect(task):
    city, tok, vocab = task
    m = evaluate_model(_Oracle(vocab, tok.vocab_size), _walks(city), vocab, tok.vocab_size,
                       prompt_moves=6, sample_moves=6, probe_steps=60)
    assert m["next_token_legal"] == 1.0 and m["valid_trajectory"] == 1.0
    assert m["valid_trajectory_5"] == 1.0
    assert m["legal_mass"] == pytest.approx(1.0, abs=1e-6)
    assert m["move_ce"] == pytest.approx(m["oracle_move_ce"], abs=1e-5)
    assert m["top1_accuracy"] <= 1.0 and m["top1_ceiling"] < 1.0
    assert m["probe_node"] > 0.95 and m["probe_x"] > 0.95 and m["probe_y"] > 0.95
    assert m["effective_rank"] > 5  # one direction per visited intersection


def test_metrics_of_models_that_do_not_track_the_state(task):
    city, tok, vocab = task
    walks = _walks(city)
    blind = evaluate_model(_Blind(vocab, tok.vocab_size), walks, vocab, tok.vocab_size,
                           prompt_moves=6, sample_moves=6, probe_steps=60)
    legal_n = encode_walks(walks, vocab, tok.vocab_size).legal[:, :-1,
                                                               vocab.direction_ids["N"]]
    assert blind["next_token_legal"] == pytest.approx(float(legal_n.float().mean()), abs=1e-6)
    assert blind["next_token_legal"] < 0.9 and blind["valid_trajectory"] < 0.3
    assert blind["probe_node"] < 0.3
    # Uniform over all four directions: legal only where every direction is.
    loose = evaluate_model(_Oracle(vocab, tok.vocab_size, legal_only=False), walks, vocab,
                           tok.vocab_size, prompt_moves=6, sample_moves=6, probe_steps=60)
    assert loose["legal_mass"] < 0.8 and loose["valid_trajectory"] < 0.5
    # Longer trajectories can only be valid less often (one sample serves every length).
    assert loose["valid_trajectory_5"] >= loose["valid_trajectory"]
    assert loose["valid_trajectory_5"] > loose["valid_trajectory"] or loose["valid_trajectory"] == 0
    assert loose["move_ce"] > loose["oracle_move_ce"] + 0.1
