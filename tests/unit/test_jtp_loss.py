"""Joint multi-token prediction (the NextLat paper's Eq. 7): the loss against a float64
reference written position by position from the equation, and the model's wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nextlat_pt.flops import parameter_counts
from nextlat_pt.model.gpt import ModelSpec, NextLatGPT, count_parameters
from nextlat_pt.model.jtp_loss import JTPLossConfig, jtp_loss
from nextlat_pt.train.train_module import NextLatTrainModule

T, B, V, STEPS, LAMBDA = 9, 2, 96, 2, 0.7


def _spec(**kw) -> ModelSpec:
    return ModelSpec(num_layers=2, hidden_size=32, num_heads=4, num_query_groups=2,
                     ffn_hidden_size=64, vocab_size=V, max_position_embeddings=16, **kw)


def _problem():
    """A window with a document boundary and a prompt, h, E(x), and a JTP model's Fetch and
    LM head (random weights)."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (B, T + 1), generator=gen)
    doc_ids = torch.zeros(T, B, dtype=torch.long)
    doc_ids[5:, 1] = 1  # row 1: a second document starts at input position 5
    loss_mask = torch.ones(T, B)
    loss_mask[:2, 0] = 0  # row 0: x_1, x_2 are prompt tokens
    torch.manual_seed(1)
    model = NextLatGPT(_spec(jtp_steps=STEPS))
    hidden = torch.randn(T, B, 32, generator=gen)
    embeddings = torch.randn(T, B, 32, generator=gen)
    return tokens, doc_ids, loss_mask, hidden, embeddings, model


def _rms(x, gain):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * gain


def _reference(tokens, doc_ids, loss_mask, hidden, embeddings, p) -> torch.Tensor:
    """Eq. 7 in float64, one (t, i) at a time: Fetch's attention over the i + 1 slots
    [h_t, E(x_{t+1}), .., E(x_{t+i})] (each plus its offset) read at slot i, through the
    output norm and the LM head, scored at x_{t+i+1}."""
    heads, dim = 4, hidden.shape[-1]
    hd = dim // heads

    def nll(logits_row, target):
        return -F.log_softmax(logits_row, dim=-1)[target]

    ce_total, ce_count = 0.0, 0.0
    for t in range(T):
        for b in range(B):
            w = float(loss_mask[t, b])
            ce_total = ce_total + w * nll(hidden[t, b] @ p["head"].t(), int(tokens[b, t + 1]))
            ce_count += w
    per_step = []
    for i in range(1, STEPS + 1):
        total, count = 0.0, 0.0
        for t in range(T - i):
            for b in range(B):
                weight = float(loss_mask[t + i, b]) * float(doc_ids[t, b] == doc_ids[t + i, b])
                slots = torch.stack([hidden[t, b]] + [embeddings[t + j, b]
                                                      for j in range(1, i + 1)])
                slots = slots + p["offsets"][:i + 1]
                qkv = (_rms(slots, p["norm"]) @ p["qkv"].t()).view(i + 1, heads, 3, hd)
                q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [slots, heads, hd]
                scores = torch.einsum("hd,shd->hs", q[i], k) / hd ** 0.5  # slot i sees all
                mixed = torch.einsum("hs,shd->hd", scores.softmax(-1), v).reshape(dim)
                state = _rms(slots[i] + mixed @ p["proj"].t(), p["out_norm"])
                total = total + weight * nll(state @ p["head"].t(), int(tokens[b, t + i + 1]))
                count += weight
        per_step.append(total / count)
    return ce_total / ce_count + LAMBDA * torch.stack(per_step).mean()


@pytest.mark.parametrize("recompute", [True, False])
def test_jtp_loss_matches_the_papers_equation_in_float64(parallel_tp1, recompute):
    tokens, doc_ids, loss_mask, hidden, embeddings, model = _problem()
    fetch = model.jtp_fetch
    names = {"offsets": fetch.offsets, "norm": fetch.norm.weight, "qkv": fetch.qkv.weight,
             "proj": fetch.proj.weight, "out_norm": fetch.out_norm.weight,
             "head": model.head_weight()}
    ref_leaves = {k: v.detach().double().clone().requires_grad_() for k, v in names.items()}
    h64 = hidden.double().requires_grad_()
    ref = _reference(tokens, doc_ids, loss_mask, h64, embeddings.double(), ref_leaves)
    ref.backward()

    h = hidden.clone().requires_grad_()
    logits = F.linear(h, model.head_weight())
    terms = jtp_loss(logits=logits, hidden=h, input_embeddings=embeddings, fetch=fetch,
                     fetched_logits=model.fetched_logits,
                     labels=tokens[:, 1:].t().contiguous(), loss_mask=loss_mask,
                     doc_ids=doc_ids,
                     cfg=JTPLossConfig(steps=STEPS, lambda_jtp=LAMBDA, recompute=recompute))
    terms.total.backward()
    torch.testing.assert_close(terms.total.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, atol=1e-5, rtol=1e-4)
    for key, param in names.items():
        torch.testing.assert_close(param.grad.double(), ref_leaves[key].grad,
                                   atol=1e-5, rtol=1e-4, msg=key)
    assert set(terms.as_dict()) == {"loss", "ce", "jtp", "ce_step1", "ce_step2"}


def test_jtp_model_keeps_the_plain_next_token_logits_and_counts_fetch(parallel_tp1):
    """Fetch sits beside the trunk: the JTP model's next-token logits are the plain
    model's (same init by global name), its parameters are the analytic count, and one
    training step reaches every Fetch parameter and the input embedding through it."""
    torch.manual_seed(0)
    ntp, jtp = NextLatGPT(_spec()), NextLatGPT(_spec(jtp_steps=STEPS))
    tokens = torch.randint(0, V, (B, 13))
    torch.testing.assert_close(jtp(tokens[:, :-1]).logits, ntp(tokens[:, :-1]).logits)
    counts = count_parameters(jtp)
    assert counts["jtp_fetch"] == parameter_counts(_spec(jtp_steps=STEPS))["jtp_fetch"] > 0
    assert counts["trunk"] == count_parameters(ntp)["trunk"]

    module = NextLatTrainModule(jtp, JTPLossConfig(steps=STEPS))
    args = (tokens[:, :-1], tokens[:, 1:].t().contiguous(), torch.ones(12, B),
            torch.zeros(12, B, dtype=torch.long))
    total, terms = module(*args)
    total.backward()
    torch.testing.assert_close(total.detach(), terms["ce"] + terms["jtp"])
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in jtp.jtp_fetch.parameters())
    ce_only_grad = NextLatGPT(_spec())
    ce_only_grad.load_state_dict(ntp.state_dict())
    NextLatTrainModule(ce_only_grad, None)(*args)[0].backward()
    embedding = jtp.gpt.embedding.word_embeddings.weight.grad
    plain = ce_only_grad.gpt.embedding.word_embeddings.weight.grad
    # E(x_{t+j}) enters Fetch: the embedding's gradient differs from next-token training's
    assert not torch.allclose(embedding, plain)
