"""Speculative sampling follows the model's (warped) distribution exactly.

On a 6-token vocabulary the exact distribution of the first 3 new tokens (216 sequences) is
enumerated from the model's own probabilities; 12,000 continuations of 6 tokens (so drafts
of up to 4 tokens fit the budget) drawn as one batch are compared with it, on their first 3
tokens, by a chi-square test (fixed seeds, so the test is deterministic; it passes at
p > 1e-3). The same test rejects a loop that resamples from p instead of the residual
norm(max(0, p - q)) after a rejection: the test has the power to see a wrong loop.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from generate_helpers import random_llama, random_psi, target_and_drafter

from nextlat_pt.generate import speculative
from nextlat_pt.generate.policies import AcceptanceDraft, ConfidenceDraft, StaticDraft
from nextlat_pt.generate.sampling import SamplingParams, warp
from nextlat_pt.generate.speculative import generate

VOCAB, NEW, GENERATED, SAMPLES = 6, 3, 6, 12_000
PROMPT = [1, 2]


@pytest.fixture(scope="module")
def tiny():
    model = random_llama(vocab=VOCAB, hidden=16, layers=1, heads=2, kv_heads=1, seed=3,
                         dtype=torch.float64)
    # A poor ψ: q is far from p, so many drafts are rejected and the residual matters.
    return target_and_drafter(model, random_psi(16, width=16, std=0.3, seed=4))


def exact_distribution(target, sampling: SamplingParams) -> dict[tuple[int, ...], float]:
    """P(x_1..x_3 | prompt) for every continuation, from one batched full forward."""
    seqs = list(itertools.product(range(VOCAB), repeat=NEW))
    ids = torch.tensor([PROMPT + list(s) for s in seqs])
    _, logits = target.decoder.full_forward(ids)
    start = len(PROMPT) - 1
    probs = warp(logits[:, start: start + NEW], sampling)  # p(x_i | prefix)
    picked = probs.gather(-1, ids[:, len(PROMPT):].unsqueeze(-1)).squeeze(-1)
    return dict(zip(seqs, picked.prod(dim=1).tolist()))


def chi_square_p_value(counts: Counter, exact: dict, samples: int) -> float:
    """Pearson's test; cells expecting fewer than 5 samples are pooled into one."""
    assert all(exact[seq] > 0 for seq in counts), "sampled a sequence of probability 0"
    observed, expected, pooled_o, pooled_e = [], [], 0.0, 0.0
    for seq, prob in exact.items():
        if samples * prob >= 5:
            observed.append(counts.get(seq, 0))
            expected.append(samples * prob)
        else:
            pooled_o += counts.get(seq, 0)
            pooled_e += samples * prob
    if pooled_e > 0:
        observed.append(pooled_o)
        expected.append(pooled_e)
    o, e = torch.tensor(observed, dtype=torch.float64), torch.tensor(expected,
                                                                     dtype=torch.float64)
    chi2 = ((o - e) ** 2 / e).sum()
    dof = torch.tensor((len(observed) - 1) / 2, dtype=torch.float64)
    return torch.special.gammaincc(dof, chi2 / 2).item()


def sample_counts(target, drafter, sampling, policy, seed: int) -> tuple[Counter, object]:
    result = generate(target, [PROMPT] * SAMPLES, GENERATED, sampling,
                      drafter=drafter if policy else None, policy=policy,
                      generator=torch.Generator().manual_seed(seed))
    return Counter(tuple(t[:NEW]) for t in result.tokens), result.stats


CASES = [
    ("plain", SamplingParams(), None),
    ("K=2", SamplingParams(), StaticDraft(2)),
    ("K=3 τ=0.7 top-k=4 top-p=0.9", SamplingParams(temperature=0.7, top_k=4, top_p=0.9),
     StaticDraft(3)),
    ("threshold", SamplingParams(temperature=1.5), ConfidenceDraft(0.3, 4)),
    ("acceptance", SamplingParams(), AcceptanceDraft(1, 1, 4)),
]


@pytest.mark.parametrize("name,sampling,policy", CASES, ids=[c[0] for c in CASES])
def test_speculative_samples_follow_the_model(tiny, name, sampling, policy):
    target, drafter = tiny
    exact = exact_distribution(target, sampling)
    counts, stats = sample_counts(target, drafter, sampling, policy, seed=11)
    p_value = chi_square_p_value(counts, exact, SAMPLES)
    print(f"{name}: p = {p_value:.3g}, accepted {stats.accepted}/{stats.drafted}")
    assert p_value > 1e-3
    if policy is not None:
        assert 0.05 * stats.drafted < stats.accepted < 0.9 * stats.drafted


def test_the_test_rejects_a_loop_without_residual_resampling(tiny, monkeypatch):
    target, drafter = tiny
    sampling = SamplingParams()
    exact = exact_distribution(target, sampling)
    monkeypatch.setattr(speculative, "residual_distribution", lambda p, q: p)
    counts, _ = sample_counts(target, drafter, sampling, StaticDraft(2), seed=11)
    p_value = chi_square_p_value(counts, exact, SAMPLES)
    print(f"without the residual: p = {p_value:.3g}")
    assert p_value < 1e-6
