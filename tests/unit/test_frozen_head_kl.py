"""The chunked frozen-head KL: what it keeps for backward, and its argument checks.

Its values and gradients are pinned against the float64 reference in test_nextlat_loss.py
(including chunks of 1, 3 and 5 tokens); here: the memory property that motivates it.
"""

from __future__ import annotations

import pytest
import torch

from nextlat_pt.model.frozen_head_kl import frozen_head_kl, teacher_log_normalizer
from nextlat_pt.model.nextlat_loss import NextLatLossConfig, nextlat_loss
from nextlat_pt.model.psi import LatentDynamics

T, B, D, V = 24, 2, 16, 96


def megatron_config(hidden_size: int):
    from nextlat_pt.model.gpt import ModelSpec, transformer_config

    return transformer_config(ModelSpec(
        num_layers=1, hidden_size=hidden_size, num_heads=2, num_query_groups=2,
        ffn_hidden_size=2 * hidden_size, vocab_size=V, max_position_embeddings=T))


def saved_tensor_shapes(fn) -> list[torch.Size]:
    """Shapes of every tensor autograd saves for backward while `fn()` runs."""
    shapes = []

    def pack(t: torch.Tensor):
        shapes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


@pytest.mark.parametrize("horizon", [1, 4])
def test_rollout_keeps_no_vocabulary_wide_tensor(parallel_tp1, horizon):
    """Whatever d, the loss saves no [.., V] tensor for backward (the logits themselves are
    the CE's and are not saved by the loss): the KL's memory is the chunk's, not T·B·V·d."""
    torch.manual_seed(0)
    hidden = torch.randn(T, B, D, requires_grad=True)
    head = torch.randn(V, D)
    logits = hidden.detach() @ head.T
    psi = LatentDynamics(megatron_config(D), width=32)
    cfg = NextLatLossConfig(horizon=horizon, kl_chunk_tokens=8)

    def run():
        nextlat_loss(hidden=hidden, logits=logits.clone(), labels=torch.randint(0, V, (T, B)),
                     input_embeddings=torch.randn(T, B, D), head_weight=head, psi=psi,
                     loss_mask=torch.ones(T, B), doc_ids=None, cfg=cfg).total.backward()

    shapes = saved_tensor_shapes(run)
    assert shapes, "the hook saw nothing: the test would pass vacuously"
    wide = [s for s in shapes if s and s[-1] == V]
    assert not wide, f"tensors of vocabulary width saved for backward: {wide}"


def test_masked_rows_get_no_gradient(parallel_tp1):
    torch.manual_seed(1)
    latent = torch.randn(10, D, requires_grad=True)
    head = torch.randn(V, D)
    teacher = torch.randn(10, V)
    weights = torch.tensor([0.0] * 4 + [1 / 6] * 6)
    loss = frozen_head_kl(latent, head, teacher, teacher_log_normalizer(teacher), weights,
                          chunk_tokens=4)
    loss.backward()
    assert loss.item() > 0
    assert torch.count_nonzero(latent.grad[:4]) == 0
    assert latent.grad[4:].abs().min() > 0


def test_kl_of_identical_distributions_is_zero(parallel_tp1):
    torch.manual_seed(2)
    latent = torch.randn(6, D)
    head = torch.randn(V, D)
    teacher = latent @ head.T
    loss = frozen_head_kl(latent, head, teacher, teacher_log_normalizer(teacher, 1.3),
                          torch.full((6,), 1 / 6), temperature=1.3, chunk_tokens=4)
    assert abs(loss.item()) < 1e-5


def test_chunk_size_must_be_positive(parallel_tp1):
    x = torch.randn(2, D)
    with pytest.raises(ValueError, match="chunk_tokens"):
        frozen_head_kl(x, torch.randn(V, D), torch.randn(2, V), torch.zeros(2), torch.ones(2),
                       chunk_tokens=0)
