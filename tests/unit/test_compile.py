"""`train.compile`: a compiled decoder layer computes the eager layer's step to bf16 tolerance,
and `auto` compiles on CUDA only. (That the layer compiles as one graph, without breaks, is
pinned in test_linear.py.)"""

from __future__ import annotations

import torch

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.nextlat_loss import NextLatLossConfig
from nextlat_pt.train.compile import compile_layers, compile_wanted
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


def test_compiled_step_equals_eager_to_bf16_tolerance(parallel_tp1):
    """NextLat d=1 (trunk, CE, ψ, KL), bf16: the loss and every parameter's gradient of the
    model with compiled layers against the same weights run eagerly."""
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = MicroBatch.from_sample({"tokens": tokens, "doc_ids": torch.zeros_like(tokens)},
                                   torch.device("cpu"))
    loss_cfg = NextLatLossConfig(horizon=1)
    eager = NextLatTrainModule(NextLatGPT(SPEC), loss_cfg)
    compiled = NextLatTrainModule(NextLatGPT(SPEC), loss_cfg)
    compiled.load_state_dict(eager.state_dict())
    assert compile_layers(compiled.model) == SPEC.num_layers
    eager_loss, eager_grads = _grads(eager, batch)
    compiled_loss, compiled_grads = _grads(compiled, batch)
    assert abs(compiled_loss - eager_loss) <= 1e-2 * abs(eager_loss)
    for name, grad in eager_grads.items():
        error = (compiled_grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error < 2e-2, f"{name}: relative gradient error {error:.3g}"
