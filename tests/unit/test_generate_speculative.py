"""Self-speculative decoding: greedy output identical to plain greedy decoding, the KV cache
right after rejections, batches, draft policies and the transformers helper.

The models are tiny random Llamas in float64 (so a multi-token verification pass and a
one-token step never disagree on a near-tied argmax) with a random ψ, whose drafts are
sometimes accepted and often rejected: both paths of the loop run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from generate_helpers import random_llama, random_psi, target_and_drafter

from nextlat_pt.generate.drafter import Drafter, Psi
from nextlat_pt.generate.policies import AcceptanceDraft, ConfidenceDraft, StaticDraft
from nextlat_pt.generate.sampling import SamplingParams
from nextlat_pt.generate.speculative import generate

GREEDY = SamplingParams(greedy=True)
PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9]]
NEW = 40
POLICIES = [StaticDraft(k) for k in range(1, 9)] + [ConfidenceDraft(0.3, 6),
                                                    AcceptanceDraft(2, 1, 6)]


@pytest.fixture(scope="module")
def tiny():
    model = random_llama(vocab=16, hidden=32, dtype=torch.float64)
    return model, *target_and_drafter(model, random_psi(32))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.describe())
def test_greedy_speculative_equals_plain_greedy(tiny, policy):
    _, target, drafter = tiny
    plain = generate(target, PROMPTS, NEW, GREEDY)
    spec = generate(target, PROMPTS, NEW, GREEDY, drafter=drafter, policy=policy)
    assert spec.tokens == plain.tokens
    assert all(len(t) == NEW for t in spec.tokens)
    s = spec.stats
    assert s.new_tokens == plain.stats.new_tokens == len(PROMPTS) * NEW
    # Drafts were both accepted and rejected, so both paths of the loop ran.
    assert 0 < s.accepted < s.drafted
    assert s.cycles < plain.stats.cycles
    assert sum(s.accepted_histogram) == s.cycles
    # Each row's cycles emit its tokens: 1 + accepted per cycle, plus the final token.
    assert s.cycles + s.accepted + len(PROMPTS) == s.new_tokens
    if isinstance(policy, StaticDraft):
        assert s.drafted <= policy.max_len * s.cycles


def test_rows_of_a_batch_decode_as_alone(tiny):
    _, target, drafter = tiny
    batch = generate(target, PROMPTS, NEW, GREEDY, drafter=drafter, policy=StaticDraft(3))
    for prompt, tokens in zip(PROMPTS, batch.tokens):
        alone = generate(target, [prompt], NEW, GREEDY, drafter=drafter,
                         policy=StaticDraft(3))
        assert alone.tokens[0] == tokens


def test_kv_cache_after_rejections_equals_a_fresh_forward(tiny):
    """After speculative decoding (with many rejections and truncations) the cache holds
    exactly what a fresh forward over the emitted sequence computes."""
    _, target, drafter = tiny
    sampling = SamplingParams(temperature=1.0)
    result = generate(target, PROMPTS, NEW, sampling, drafter=drafter, policy=StaticDraft(4),
                      generator=torch.Generator().manual_seed(0))
    assert result.stats.accepted < result.stats.drafted
    decoder, cache = target.decoder, target.cache
    # The last emitted token is not in the cache yet: it would be the next cycle's input.
    assert cache.lengths.tolist() == [len(p) + NEW - 1 for p in PROMPTS]
    last = torch.tensor([[t[-1]] for t in result.tokens])
    hidden, logits = target.extend(last)
    for row, (prompt, new) in enumerate(zip(PROMPTS, result.tokens)):
        seq = torch.tensor([prompt + new])
        ref_hidden, ref_logits = decoder.full_forward(seq)
        fresh = decoder.new_cache(1, seq.shape[1])
        decoder(seq[:, :-1], fresh)
        n = seq.shape[1] - 1
        assert torch.allclose(cache.keys[:, row, :n], fresh.keys[:, 0, :n], atol=1e-10)
        assert torch.allclose(cache.values[:, row, :n], fresh.values[:, 0, :n], atol=1e-10)
        assert (hidden[row, 0] - ref_hidden[0, -1]).abs().max().item() <= 1e-10
        assert (logits[row, 0] - ref_logits[0, -1]).abs().max().item() <= 1e-10


def test_a_perfect_drafter_has_every_draft_accepted():
    """Identical embedding rows make every hidden state equal, so ψ = identity (fc3 = 0)
    drafts exactly the target's distribution: greedy or sampled, nothing is rejected, and
    each cycle emits K + 1 tokens."""
    model = random_llama(vocab=16, hidden=32, dtype=torch.float64)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[:1].expand(16,
                                                                                        -1))
    decoder_target, drafter = target_and_drafter(model, random_psi(32))
    psi = Psi({"norm.weight": drafter.psi.norm, "fc1.weight": drafter.psi.fc1,
               "fc2.weight": drafter.psi.fc2, "fc3.weight": torch.zeros_like(drafter.psi.fc3)},
              1e-5, torch.float64)
    perfect = Drafter(psi, drafter.embedding, drafter.head)
    for sampling in (GREEDY, SamplingParams(temperature=1.0)):
        plain = generate(decoder_target, [[1, 2, 3]], 21, sampling,
                         generator=torch.Generator().manual_seed(5))
        spec = generate(decoder_target, [[1, 2, 3]], 21, sampling, drafter=perfect,
                        policy=StaticDraft(4), generator=torch.Generator().manual_seed(5))
        s = spec.stats
        assert s.accepted == s.drafted == 16 and s.cycles == 4  # 4 cycles of 1 + 4 tokens
        if sampling.greedy:
            assert spec.tokens == plain.tokens


def test_eos_ends_a_row_and_budget_caps_drafts(tiny):
    _, target, drafter = tiny
    plain = generate(target, PROMPTS, NEW, GREEDY)
    eos = plain.tokens[0][10]  # a token row 0 emits: it must stop there
    for kwargs in ({}, {"drafter": drafter, "policy": StaticDraft(5)}):
        out = generate(target, PROMPTS, NEW, GREEDY, eos_id=eos, **kwargs)
        for row, tokens in enumerate(out.tokens):
            ref = plain.tokens[row]
            cut = ref.index(eos) + 1 if eos in ref else NEW
            assert tokens == ref[:cut]
    one = generate(target, PROMPTS, 1, GREEDY, drafter=drafter, policy=StaticDraft(5))
    assert [len(t) for t in one.tokens] == [1, 1, 1] and one.stats.cycles == 0


def test_acceptance_policy_adapts_k():
    policy = AcceptanceDraft(k_init=2, k_min=1, k_max=4)
    policy.start(3, torch.device("cpu"))
    policy.update(torch.tensor([2, 2, 1]), torch.tensor([2, 0, 1]))  # row 2 drafted < K
    assert policy.lengths().tolist() == [3, 1, 2]
    for _ in range(5):
        policy.update(policy.lengths().clone(), policy.lengths().clone())
    assert policy.lengths().tolist() == [4, 4, 4]
    confident = ConfidenceDraft(0.6, 8).keep_drafting(torch.tensor([0.5, 0.6, 0.9]))
    assert confident.tolist() == [False, True, True]


def test_transformers_helper_runs_the_same_loop(tiny):
    """`speculative_generate_hf` on the transformers model (DynamicCache, cropped after
    rejections) gives our decoder's tokens: greedy, and sampled with the same seed."""
    from nextlat_pt.generate.hf import speculative_generate_hf

    model, target, drafter = tiny
    prompt = PROMPTS[0]
    for sampling in (GREEDY, SamplingParams(temperature=0.9, top_k=8)):
        for k in (1, 3, 6):
            ours = generate(target, [prompt], 30, sampling, drafter=drafter,
                            policy=StaticDraft(k), generator=torch.Generator().manual_seed(k))
            hf = speculative_generate_hf(model, drafter.psi, torch.tensor([prompt]), 30,
                                         draft_len=k, sampling=sampling,
                                         generator=torch.Generator().manual_seed(k))
            assert hf.tokens == ours.tokens
            assert (hf.stats.accepted, hf.stats.drafted) == (ours.stats.accepted,
                                                             ours.stats.drafted)
            assert 0 < hf.stats.accepted < hf.stats.drafted
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = 1000  # never generated: 30 tokens, as ours without eos_id
    with torch.no_grad():
        reference = model.generate(torch.tensor([prompt]), generation_config=config,
                                   max_new_tokens=30, do_sample=False)
    hf = speculative_generate_hf(model, drafter.psi, prompt, 30, draft_len=4)
    assert hf.tokens[0] == reference[0, len(prompt):].tolist()
