"""`train.compile`: compiled decoder layers and ψ compute the eager step to bf16 tolerance,
ψ's one step and rollout step each compile as one graph, and `auto` compiles on CUDA only.
(That the layer compiles as one graph, without breaks, is pinned in test_linear.py.)"""

from __future__ import annotations

import pytest
import torch

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.nextlat_loss import NextLatLossConfig
from nextlat_pt.train.compile import compile_layers, compile_psi, compile_wanted
from nextlat_pt.train.step import MicroBatch
from nextlat_pt.train.train_module import NextLatTrainModule

SPEC = ModelSpec(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=2,
                 ffn_hidden_size=96, vocab_size=256, max_position_embeddings=32,
                 attention_backend="sdpa", psi_width=96, params_dtype=torch.bfloat16)


def test_auto_compiles_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_wanted("auto", cuda) and not compile_wanted("auto", cpu)
    assert compile_wanted("true", cpu) and not compile_wanted("false", cuda)


def _grads(module: NextLatTrainModule, batch: MicroBatch) -> tuple[float, dict]:
    loss, _ = module(batch.input_ids, batch.labels, batch.loss_mask, batch.doc_ids)
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in module.named_parameters()}


@pytest.mark.parametrize("horizon", [1, 2])
def test_compiled_step_equals_eager_to_bf16_tolerance(parallel_tp1, horizon):
    """NextLat d=1 (ψ's one-step form) and d=2 (its rollout step): trunk, CE, ψ, KL, bf16:
    the loss and every parameter's gradient of the model with compiled layers, ψ and KL
    chunks against the same weights run eagerly."""
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = MicroBatch.from_sample({"tokens": tokens, "doc_ids": torch.zeros_like(tokens)},
                                   torch.device("cpu"))
    eager = NextLatTrainModule(NextLatGPT(SPEC), NextLatLossConfig(horizon=horizon))
    compiled = NextLatTrainModule(NextLatGPT(SPEC),
                                  NextLatLossConfig(horizon=horizon, fused_kl=True))
    compiled.load_state_dict(eager.state_dict())
    assert compile_layers(compiled.model) == SPEC.num_layers
    assert compile_psi(compiled.model)
    eager_loss, eager_grads = _grads(eager, batch)
    compiled_loss, compiled_grads = _grads(compiled, batch)
    assert abs(compiled_loss - eager_loss) <= 1e-2 * abs(eager_loss)
    for name, grad in eager_grads.items():
        error = (compiled_grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error < 2e-2, f"{name}: relative gradient error {error:.3g}"


def test_psi_one_step_and_rollout_step_compile_as_one_graph_each(parallel_tp1):
    """ψ's linears are the traceable ones: no graph break in either form."""
    psi = NextLatGPT(SPEC).psi
    hidden = torch.randn(8, 2, SPEC.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    embedding = torch.randn(9, 2, SPEC.hidden_size, dtype=torch.bfloat16)
    inputs = psi.embed(embedding[1:])
    for run, args in ((psi.forward, (hidden, embedding[1:])), (psi.step, (hidden, inputs))):
        explained = torch._dynamo.explain(run)(*args)
        reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
        assert explained.graph_break_count == 0, reasons
        assert explained.graph_count == 1


def test_fused_kl_chunks_equal_eager_and_compile_as_one_graph():
    """The KL's per-chunk passes compiled: the same KL and gradient to ĥ as eager (fp32 to
    1e-5, several chunks with an empty one), in one graph."""
    from nextlat_pt.model.frozen_head_kl import _chunk_terms, frozen_head_kl

    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(40, 16, generator=gen, requires_grad=True)
    head = torch.randn(96, 16, generator=gen)
    teacher = torch.randn(40, 96, generator=gen) * 3
    lse = torch.logsumexp(teacher, -1)
    weights = torch.rand(40, generator=gen)
    weights[16:32] = 0  # the second chunk contributes nothing
    results = []
    for fused in (False, True):
        latent.grad = None
        kl = frozen_head_kl(latent, head, teacher, lse, weights, 1.0, 16, fused=fused)
        kl.backward()
        results.append((kl.detach(), latent.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)
    z = latent.detach()[:16] @ head.t()
    explained = torch._dynamo.explain(_chunk_terms)(z, teacher[:16], lse[:16],
                                                    torch.logsumexp(z, -1), 1.0, torch.float32)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
