"""Task metrics of a model on held-out walks: move legality, trajectories, latent structure.

- next-token legality (Vafa et al.'s next-token test): the share of positions where the
  model's argmax next token is a legal move from the true current intersection; plus plain
  top-1 accuracy against the walk's actual next move (a random walk's next move is uniform over
  the legal ones, so 1/degree is the best any model can do; `top1_ceiling` is its mean), and
  the probability mass the model puts on the legal moves; and the CE of the moves beside the
  oracle's (mean log out-degree: a random walk cannot be predicted better);
- valid-trajectory rate: from prompts (start + m moves), sample n moves at temperature 1 and
  count the trajectories whose sampled moves are all legal (also for their first 5, 10 moves);
- effective rank of the final hidden states;
- world-state probes: linear probes from the frozen hidden state at a position to the
  intersection reached there (and its x, y), split by walk.

A model is anything with `logits_and_hidden(ids [B, T]) -> (logits [B, T, V], hidden
[B, T, D])`, as `nextlat_pt.eval.models.NextLatModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from nextlat_pt.eval.diagnostics import effective_rank, fit_linear_probe
from nextlat_pt.eval.diagnostics.probes import DEFAULT_STEPS
from nextlat_pt.tasks.manhattan.generate import Walk
from nextlat_pt.tasks.manhattan.graph import DIRECTIONS, City
from nextlat_pt.tasks.manhattan.vocab import TaskVocab


class TaskModel(Protocol):
    """What the metrics need from a model."""

    def logits_and_hidden(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T] ids -> (logits [B, T, V], final hidden states [B, T, D]), float32."""


@dataclass
class EncodedWalks:
    """Held-out walks as ids [N, L+1] with the true intersection at each position [N, L+1]
    and the legal-move mask over the vocabulary at each position [N, L+1, V]."""

    ids: Tensor
    states: Tensor
    legal: Tensor


def encode_walks(walks: Sequence[Walk], vocab: TaskVocab, vocab_size: int) -> EncodedWalks:
    """Ids, states and legal-next-token masks of equal-length walks."""
    if not walks or len({len(w.moves) for w in walks}) != 1:
        raise ValueError("encode_walks needs at least one walk, all of the same length")
    city = vocab.city
    node_legal = torch.zeros(city.num_nodes, vocab_size, dtype=torch.bool)
    for node in range(city.num_nodes):
        for move in city.legal_moves(node):
            node_legal[node, vocab.direction_ids[move]] = True
    ids = torch.tensor([vocab.encode_walk(w.start, w.moves) for w in walks])
    states = torch.tensor([city.states(w.start, w.moves) for w in walks])
    return EncodedWalks(ids, states, node_legal[states])


def _forward(model: TaskModel, ids: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    logits, hidden = [], []
    for i in range(0, len(ids), batch_size):
        lg, hd = model.logits_and_hidden(ids[i:i + batch_size])
        logits.append(lg.float())
        hidden.append(hd.float())
    return torch.cat(logits), torch.cat(hidden)


def next_token_metrics(logits: Tensor, walks: EncodedWalks) -> dict[str, float]:
    """Legality / accuracy of the argmax next token at every position that predicts a move."""
    pred_logits = logits[:, :-1]  # position t predicts move t+1
    legal = walks.legal[:, :-1, : pred_logits.shape[-1]]
    argmax = pred_logits.argmax(-1)
    is_legal = legal.gather(-1, argmax.unsqueeze(-1)).squeeze(-1)
    probs = pred_logits.softmax(-1)
    degree = legal.sum(-1).float()
    targets = walks.ids[:, 1:]
    move_ce = -pred_logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).mean()
    return {
        "move_ce": float(move_ce),
        "oracle_move_ce": float(degree.log().mean()),
        "next_token_legal": float(is_legal.float().mean()),
        "top1_accuracy": float((argmax == walks.ids[:, 1:]).float().mean()),
        "top1_ceiling": float((1.0 / degree).mean()),
        "legal_mass": float((probs * legal).sum(-1).mean()),
    }


@torch.no_grad()
def valid_trajectory_rates(model: TaskModel, walks: EncodedWalks, vocab: TaskVocab,
                           prompt_moves: int, sample_moves: int, seed: int = 0,
                           batch_size: int = 128) -> dict[int, float]:
    """For k = 5, 10, 20, ... up to `sample_moves` (and `sample_moves` itself): the share of
    sampled continuations (temperature 1, full recompute per token) whose first k moves are
    all legal, from the first `prompt_moves` moves of each walk. One sample serves every k."""
    if prompt_moves + 1 > walks.ids.shape[1]:
        raise ValueError(f"prompt_moves={prompt_moves} exceeds the walks' "
                         f"{walks.ids.shape[1] - 1} moves")
    gen = torch.Generator().manual_seed(seed)
    city = vocab.city
    to_direction = vocab.id_to_direction
    first_bad: list[int] = []  # per trajectory: the number of legal moves before the first bad
    for i in range(0, len(walks.ids), batch_size):
        ids = walks.ids[i:i + batch_size, : prompt_moves + 1].clone()
        state = walks.states[i:i + batch_size, prompt_moves].tolist()
        legal_run = [sample_moves] * len(ids)
        for step in range(sample_moves):
            logits, _ = model.logits_and_hidden(ids)
            nxt = torch.multinomial(logits[:, -1].float().softmax(-1), 1, generator=gen)
            for row, token in enumerate(nxt.squeeze(1).tolist()):
                if legal_run[row] < sample_moves:
                    continue  # already off the streets
                move = to_direction.get(token)
                if move is None or move not in city.moves[state[row]]:
                    legal_run[row] = step
                else:
                    state[row] = city.moves[state[row]][move]
            ids = torch.cat([ids, nxt], dim=1)
        first_bad += legal_run
    lengths = sorted({k for k in (5, 10, 20, 40) if k < sample_moves} | {sample_moves})
    return {k: sum(r >= k for r in first_bad) / len(first_bad) for k in lengths}


def valid_trajectory_rate(model: TaskModel, walks: EncodedWalks, vocab: TaskVocab,
                          prompt_moves: int, sample_moves: int, seed: int = 0) -> float:
    """Share of sampled continuations of `sample_moves` moves that are legal throughout."""
    return valid_trajectory_rates(model, walks, vocab, prompt_moves, sample_moves,
                                  seed)[sample_moves]


def world_state_probes(hidden: Tensor, walks: EncodedWalks, city: City, seed: int = 0,
                       steps: int = DEFAULT_STEPS) -> dict[str, dict]:
    """Linear probes from h_t (every position, start token included) to the intersection
    reached at t and to its x and y; 80% of the walks train, the rest score."""
    n, t, d = hidden.shape
    features = hidden.reshape(n * t, d)
    states = walks.states.reshape(-1)
    groups = torch.arange(n).repeat_interleave(t)
    return {
        name: fit_linear_probe(features, target, classes, groups=groups, seed=seed,
                               steps=steps).to_dict()
        for name, target, classes in (("node", states, city.num_nodes),
                                      ("x", states % city.width, city.width),
                                      ("y", states // city.width, city.height))
    }


def evaluate_model(model: TaskModel, walks: Sequence[Walk], vocab: TaskVocab, vocab_size: int,
                   *, prompt_moves: int, sample_moves: int, seed: int = 0,
                   batch_size: int = 64, probe_steps: int = DEFAULT_STEPS) -> dict:
    """Every task metric of `model` on `walks` (equal lengths), as one JSON-able dict."""
    enc = encode_walks(walks, vocab, vocab_size)
    logits, hidden = _forward(model, enc.ids, batch_size)
    probes = world_state_probes(hidden, enc, vocab.city, seed=seed, steps=probe_steps)
    rates = valid_trajectory_rates(model, enc, vocab, prompt_moves, sample_moves, seed=seed)
    return {
        **next_token_metrics(logits, enc),
        "valid_trajectory": rates[sample_moves],
        **{f"valid_trajectory_{k}": v for k, v in rates.items()},
        "effective_rank": effective_rank(hidden.reshape(-1, hidden.shape[-1])),
        "probe_node": probes["node"]["accuracy"],
        "probe_x": probes["x"]["accuracy"],
        "probe_y": probes["y"]["accuracy"],
        "probe_node_majority": probes["node"]["majority_accuracy"],
        "probes": probes,
        "num_walks": len(walks),
        "directions": list(DIRECTIONS),
    }
