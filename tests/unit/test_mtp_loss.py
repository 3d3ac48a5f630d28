"""Multi-token prediction (Gloeckle et al., 2024): the loss against a float64 reference
written from the paper, and the model's heads wired as the paper's architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.mtp_loss import MTPLossConfig, mtp_loss
from nextlat_pt.train.train_module import NextLatTrainModule

T, B, D, V, N = 9, 2, 8, 32, 3


def _problem():
    """A window of tokens with a document boundary and a prompt, a trunk output z, and
    n heads: tiny residual layers sharing one RMSNorm gain and one unembedding."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (B, T + 1), generator=gen)
    doc_ids = torch.zeros(T, B, dtype=torch.long)
    doc_ids[5:, 1] = 1  # row 1: a second document starts at input position 5
    loss_mask = torch.ones(T, B)
    loss_mask[:2, 0] = 0  # row 0: x_1, x_2 are prompt tokens
    z = torch.randn(T, B, D, generator=gen)
    layers = [torch.randn(D, D, generator=gen) * 0.5 for _ in range(N)]
    gain = 1 + 0.1 * torch.randn(D, generator=gen)
    head = torch.randn(V, D, generator=gen)
    return tokens, doc_ids, loss_mask, z, layers, gain, head


def _reference(tokens, doc_ids, loss_mask, z, layers, gain, head) -> torch.Tensor:
    """The paper's L_n, averaged over heads, in float64 and written position by position:
    head k at position t predicts x_{t+k} from z_t through softmax(W · Norm(f_hk(z_t)))."""
    per_head = []
    for k in range(1, N + 1):
        hidden = z + torch.tanh(z @ layers[k - 1].t())  # f_hk: one residual layer
        normed = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-5) * gain
        logp = F.log_softmax(normed @ head.t(), dim=-1)  # [T, B, V]
        total, count = 0.0, 0.0
        for t in range(T - k + 1):
            for b in range(B):
                target = int(tokens[b, t + k])  # x_{t+k}
                same_doc = doc_ids[t, b] == doc_ids[t + k - 1, b]
                weight = float(loss_mask[t + k - 1, b]) * float(same_doc)
                total = total - weight * logp[t, b, target]
                count += weight
        per_head.append(total / count)
    return torch.stack(per_head).mean()


def _ours(problem, recompute: bool):
    tokens, doc_ids, loss_mask, z, layers, gain, head = problem
    z = z.float().clone().requires_grad_()
    layers = [w.float().clone().requires_grad_() for w in layers]
    gain, head = gain.float().clone().requires_grad_(), head.float().clone().requires_grad_()

    def decode(k: int, trunk: torch.Tensor) -> torch.Tensor:
        hidden = trunk + torch.tanh(trunk @ layers[k - 1].t())
        normed = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-5) * gain
        return normed @ head.t()

    terms = mtp_loss(logits=decode(1, z), trunk=z, head_logits=decode,
                     labels=tokens[:, 1:].t().contiguous(), loss_mask=loss_mask,
                     doc_ids=doc_ids, cfg=MTPLossConfig(heads=N, recompute_heads=recompute))
    terms.total.backward()
    return terms, [z, *layers, gain, head]


@pytest.mark.parametrize("recompute", [True, False])
def test_mtp_loss_matches_the_papers_loss_in_float64(parallel_tp1, recompute):
    problem = _problem()
    leaves = [x.double().clone().requires_grad_() for x in problem[3:4] + tuple(problem[4])
              + problem[5:]]
    ref = _reference(*problem[:3], leaves[0], leaves[1:1 + N], *leaves[1 + N:])
    ref.backward()
    terms, ours = _ours(problem, recompute)
    torch.testing.assert_close(terms.total.double(), ref, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(ours, leaves, strict=True):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, atol=1e-5, rtol=1e-4)
    assert set(terms.as_dict()) == {"loss", "ce", "ce_head2", "ce_head3"}


def _spec(**kw) -> ModelSpec:
    return ModelSpec(num_layers=2, hidden_size=32, num_heads=4, num_query_groups=2,
                     ffn_hidden_size=64, vocab_size=96, max_position_embeddings=16, **kw)


def test_mtp_heads_read_the_last_layers_input_through_the_shared_norm_and_head(parallel_tp1):
    """Head 1 is the trunk's last layer: the MTP model's next-token logits are the plain
    model's (same init by global name). A head k given head 1's weights decodes exactly
    head 1's logits: it reads z (the last layer's input) through the one norm and head."""
    torch.manual_seed(0)
    ntp, mtp = NextLatGPT(_spec()), NextLatGPT(_spec(mtp_heads=3))
    tokens = torch.randint(0, 96, (B, 12))
    plain, out = ntp(tokens), mtp(tokens)
    torch.testing.assert_close(out.logits, plain.logits)
    last = mtp.gpt.decoder.layers[-1].state_dict()
    for k in (2, 3):
        assert not torch.allclose(mtp.head_logits(k, out.trunk, out.rotary_pos_emb),
                                  out.logits)
        mtp.mtp_heads.layers[k - 2].load_state_dict(last)
        torch.testing.assert_close(mtp.head_logits(k, out.trunk, out.rotary_pos_emb),
                                   out.logits)


def test_mtp_train_module_logs_head_one_as_the_next_token_ce(parallel_tp1):
    torch.manual_seed(0)
    tokens = torch.randint(0, 96, (B, 13))
    args = (tokens[:, :-1], tokens[:, 1:].t().contiguous(), torch.ones(12, B),
            torch.zeros(12, B, dtype=torch.long))
    ntp = NextLatTrainModule(NextLatGPT(_spec()), None)
    mtp = NextLatTrainModule(NextLatGPT(_spec(mtp_heads=2)), MTPLossConfig(heads=2))
    ce, _ = ntp(*args)
    total, terms = mtp(*args)
    total.backward()
    torch.testing.assert_close(terms["ce"], ce.detach())
    torch.testing.assert_close(total.detach(), (terms["ce"] + terms["ce_head2"]) / 2)
    heads = mtp.model.mtp_heads.layers[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


def test_mtp_under_full_recompute_gives_identical_gradients(parallel_tp1):
    """The trunk output z is caught on its way into the last layer; under full activation
    recomputation that layer runs inside a checkpoint, and z must still carry its graph."""
    tokens = torch.randint(0, 96, (B, 13), generator=torch.Generator().manual_seed(1))
    args = (tokens[:, :-1], tokens[:, 1:].t().contiguous(), torch.ones(12, B),
            torch.zeros(12, B, dtype=torch.long))
    grads = []
    for recompute in (False, True):
        module = NextLatTrainModule(NextLatGPT(_spec(mtp_heads=2, recompute=recompute)),
                                    MTPLossConfig(heads=2))
        module.train()
        module(*args)[0].backward()
        grads.append({n: p.grad for n, p in module.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)
