"""Activation recomputation changes memory, not numbers: same loss and gradients."""

from __future__ import annotations

import torch

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.nextlat_loss import NextLatLossConfig
from nextlat_pt.train.train_module import NextLatTrainModule


def _loss_and_grads(recompute: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    spec = ModelSpec(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=4,
                     ffn_hidden_size=128, vocab_size=256, max_position_embeddings=16,
                     psi_width=128, recompute=recompute)
    module = NextLatTrainModule(NextLatGPT(spec), NextLatLossConfig(horizon=2))
    module.train()
    assert module.model.gpt.decoder.config.recompute_granularity == (
        "full" if recompute else None)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 256, (2, 17), generator=gen)
    labels = tokens[:, 1:].t().contiguous()
    total, _ = module(tokens[:, :-1], labels, torch.ones(16, 2), torch.zeros(16, 2).long())
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}


def test_recompute_gives_identical_loss_and_gradients(parallel_tp1):
    loss, grads = _loss_and_grads(recompute=False)
    loss_rc, grads_rc = _loss_and_grads(recompute=True)
    torch.testing.assert_close(loss_rc, loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == grads_rc.keys()
    for name in grads:
        torch.testing.assert_close(grads_rc[name], grads[name], atol=1e-6, rtol=1e-5)
