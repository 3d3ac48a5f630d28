"""One deterministic NextLat (or MTP, or JTP) forward/backward, shared by the TP=1 test and the TP=2
worker.

The model is built from the same seed in both layouts (megatron initialises the full weight
on the CPU and hands each rank its shard), the inputs are seeded, and every parameter's
value and gradient is gathered back to its TP=1 shape.
"""

from __future__ import annotations

import torch

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.jtp_loss import JTPLossConfig
from nextlat_pt.model.mtp_loss import MTPLossConfig
from nextlat_pt.model.nextlat_loss import NextLatLossConfig, nextlat_loss
from nextlat_pt.parallel.gather import full_parameter
from nextlat_pt.parallel.grads import register_sequence_parallel_grad_hooks
from nextlat_pt.train.train_module import NextLatTrainModule

VOCAB, SEQ, BATCH = 512, 16, 3
# The cases by name: run_case's keyword arguments.
CASES = {"untied": {"tied": False}, "tied": {"tied": True},
         "mtp3_sp": {"tied": False, "mtp": True}, "jtp2_sp": {"tied": False, "jtp": True}}


def run_case(tp: int, tied: bool, mtp: bool = False, jtp: bool = False,
             ) -> dict[str, torch.Tensor]:
    """Loss terms plus full parameters and gradients for a d=2 NextLat step, or (`mtp`) a
    3-head MTP step, or (`jtp`) a d=2 JTP step; MTP and JTP sequence-parallel under TP."""
    sp = (mtp or jtp) and tp > 1
    spec = ModelSpec(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=2,
                     ffn_hidden_size=128, vocab_size=VOCAB, max_position_embeddings=SEQ,
                     psi_width=0 if mtp or jtp else 128, mtp_heads=3 if mtp else 1,
                     jtp_steps=2 if jtp else 0,
                     tie_embeddings=tied, tp=tp, sequence_parallel=sp)
    torch.manual_seed(42)
    model = NextLatGPT(spec)
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    doc_ids = torch.cumsum((torch.rand(BATCH, SEQ, generator=gen) < 0.15).long(), dim=1).t()
    loss_mask = (torch.rand(SEQ, BATCH, generator=gen) > 0.2).float()
    labels = tokens[:, 1:].t().contiguous()
    if mtp or jtp:
        if sp:
            register_sequence_parallel_grad_hooks(model)
        loss_cfg = MTPLossConfig(heads=3) if mtp else JTPLossConfig(steps=2, lambda_jtp=0.5)
        total, logged = NextLatTrainModule(model, loss_cfg)(
            tokens[:, :-1], labels, loss_mask, doc_ids)
        total.backward()
    else:
        out = model(tokens[:, :-1])
        terms = nextlat_loss(
            hidden=out.hidden, logits=out.logits, labels=labels,
            input_embeddings=out.input_embeddings, head_weight=model.head_weight(),
            psi=model.psi, loss_mask=loss_mask, doc_ids=doc_ids,
            cfg=NextLatLossConfig(horizon=2, lambda_latent=1.0, lambda_kl=1.0),
        )
        terms.total.backward()
        logged = terms.as_dict()
    result = {f"loss.{k}": v.detach().clone() for k, v in logged.items()}
    for name, param in model.named_parameters():
        result[f"param.{name}"] = full_parameter(param)
        result[f"grad.{name}"] = full_parameter(param, use_grad=True)
    return result
