"""Logit warping (temperature, top-k, top-p, greedy) and the residual distribution."""

from __future__ import annotations

import pytest
import torch

from nextlat_pt.generate.sampling import SamplingParams, choose, warp
from nextlat_pt.generate.speculative import residual_distribution

LOGITS = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))


def test_temperature_top_k_top_p():
    plain = warp(LOGITS, SamplingParams())
    assert torch.allclose(plain, torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    hot = warp(LOGITS, SamplingParams(temperature=2.0))
    assert torch.allclose(hot, torch.softmax(LOGITS / 2, dim=-1))
    top2 = warp(LOGITS, SamplingParams(top_k=2))
    assert torch.allclose(top2, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]))
    # top-p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the third token is needed; the fourth is not.
    nucleus = warp(LOGITS, SamplingParams(top_p=0.8))
    assert torch.allclose(nucleus, torch.tensor([[0.5, 0.2, 0.15, 0, 0]]) / 0.85)
    # top-p below the largest probability keeps just the argmax.
    assert torch.equal(warp(LOGITS, SamplingParams(top_p=0.1)).gt(0),
                       torch.tensor([[True, False, False, False, False]]))
    # Unsorted logits: the mask follows the tokens, not the sorted order.
    shuffled = LOGITS[:, [3, 0, 4, 2, 1]]
    assert torch.allclose(warp(shuffled, SamplingParams(top_p=0.8)),
                          nucleus[:, [3, 0, 4, 2, 1]])


def test_greedy_is_one_hot_and_draws_nothing():
    params = SamplingParams(greedy=True)
    probs = warp(torch.tensor([[0.1, 3.0, -1.0], [2.0, 2.0, 1.0]]), params)
    assert probs.tolist() == [[0, 1, 0], [1, 0, 0]]  # ties: the first
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert choose(probs, params, generator).tolist() == [1, 0]
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_residual_distribution():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.2, 0.6, 0.2], [0.0, 0.0, 0.0]])
    r = residual_distribution(p, q)
    assert torch.allclose(r[0], torch.tensor([1.0, 0.0, 0.0]))  # max(0, p - q), normalised
    assert torch.allclose(r[1], p[1])  # q = 0: p itself
    assert torch.allclose(residual_distribution(p, p), p)  # no mass left: p
