"""The chunked cross entropy (`nextlat_pt/model/vocab_parallel.py`) against F.cross_entropy:
value, gradient, log-normalisers, for chunks that do not divide the tokens, with masked
positions, and without touching the logits (the NextLat teacher reads them afterwards).
TP=2 against TP=1: tests/distributed/test_tensor_parallel.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nextlat_pt.model.vocab_parallel import vocab_parallel_cross_entropy_mean


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_ce_is_masked_cross_entropy(parallel_tp1, chunk, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(7, 3, 50, generator=gen)).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (7, 3), generator=gen)
    mask = (torch.rand(7, 3, generator=gen) > 0.3).float()
    before = logits.detach().clone()
    ce, lse = vocab_parallel_cross_entropy_mean(logits, labels, mask, chunk_tokens=chunk)
    assert torch.equal(logits.detach(), before)  # the teacher's logits are intact
    (2.5 * ce).backward()

    ref_logits = before.float().requires_grad_()
    per_token = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), reduction="none")
    ref = (per_token * mask.flatten()).sum() / mask.sum()
    (2.5 * ref).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ce, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(before.float(), -1), rtol=1e-5, atol=1e-5)
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, rtol=tol, atol=tol * 0.1)


def test_in_place_writes_the_gradient_over_the_logits(parallel_tp1):
    gen = torch.Generator().manual_seed(1)
    leaf = torch.randn(6, 2, 30, generator=gen, requires_grad=True)
    labels = torch.randint(0, 30, (6, 2), generator=gen)
    mask = torch.ones(6, 2)
    logits = leaf * 1.0  # a non-leaf, as the LM head's output
    storage = logits.data_ptr()
    ce, _ = vocab_parallel_cross_entropy_mean(logits, labels, mask, 4, in_place=True)
    ce.backward()
    ref = leaf.detach().clone().requires_grad_()
    F.cross_entropy(ref.flatten(0, 1), labels.flatten()).backward()
    torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-5, atol=1e-6)
    assert logits.data_ptr() == storage
    torch.testing.assert_close(logits.detach(), ref.grad)  # the logits now hold the gradient


def test_nothing_valid_is_zero_not_nan(parallel_tp1):
    logits = torch.randn(4, 2, 10, requires_grad=True)
    ce, _ = vocab_parallel_cross_entropy_mean(logits, torch.zeros(4, 2, dtype=torch.long),
                                              torch.zeros(4, 2))
    ce.backward()
    assert ce.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
