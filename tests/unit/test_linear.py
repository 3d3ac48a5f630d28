"""Our traceable tensor-parallel linears (`nextlat_pt/model/linear.py`) against megatron's: the
same parameters and checkpoint entries, outputs and gradients to the bit (TP=1 here; TP=2
against TP=1 through the whole model in tests/distributed/test_tensor_parallel.py)."""

from __future__ import annotations

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT, transformer_config
from nextlat_pt.model.linear import TracedColumnParallelLinear, TracedRowParallelLinear

PAIRS = [(ColumnParallelLinear, TracedColumnParallelLinear, {"gather_output": False}),
         (RowParallelLinear, TracedRowParallelLinear, {"input_is_parallel": True,
                                                       "skip_bias_add": False})]


def _config(dtype: torch.dtype):
    spec = ModelSpec(num_layers=1, hidden_size=48, num_heads=4, num_query_groups=4,
                     ffn_hidden_size=64, vocab_size=128, max_position_embeddings=16,
                     params_dtype=dtype)
    return transformer_config(spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("theirs, ours, kwargs", PAIRS, ids=["column", "row"])
def test_traced_linear_is_megatrons_to_the_bit(parallel_tp1, dtype, theirs, ours, kwargs):
    config = _config(dtype)
    args = dict(config=config, init_method=torch.nn.init.normal_, bias=False, **kwargs)
    reference, traced = theirs(48, 80, **args), ours(48, 80, **args)
    traced.load_state_dict(reference.state_dict())
    assert list(traced.state_dict()) == list(reference.state_dict())  # incl. _extra_state
    assert traced.weight.tensor_model_parallel == reference.weight.tensor_model_parallel
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 48, generator=gen).to(dtype)
    grad = torch.randn(7, 3, 80, generator=gen).to(dtype)
    results = []
    for layer in (reference, traced):
        inp = x.clone().requires_grad_()
        out, bias = layer(inp)
        out.backward(grad)
        results.append((out, bias, inp.grad, layer.weight.grad))
    for got, want in zip(results[1], results[0]):
        assert (got is None and want is None) or torch.equal(got, want)


def test_the_model_uses_them_and_compiles_as_one_graph(parallel_tp1):
    """The decoder layer's linears are ours, and dynamo takes the layer whole: no graph break
    (megatron's linear Function broke it into eight graphs, our RoPE/SwiGLU out= writes into
    more); what `train.compile` relies on."""
    spec = ModelSpec(num_layers=1, hidden_size=64, num_heads=4, num_query_groups=2,
                     ffn_hidden_size=96, vocab_size=128, max_position_embeddings=32,
                     attention_backend="sdpa", params_dtype=torch.bfloat16)
    model = NextLatGPT(spec)
    layer = model.gpt.decoder.layers[0]
    assert isinstance(layer.self_attention.linear_qkv, TracedColumnParallelLinear)
    assert isinstance(layer.self_attention.linear_proj, TracedRowParallelLinear)
    assert isinstance(layer.mlp.linear_fc1, TracedColumnParallelLinear)
    assert isinstance(layer.mlp.linear_fc2, TracedRowParallelLinear)
    hidden = torch.randn(32, 2, 64, dtype=torch.bfloat16, requires_grad=True)
    rotary = model.gpt.rotary_pos_emb(32)

    def run(x, rot):
        return layer(hidden_states=x, attention_mask=None, rotary_pos_emb=rot)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(run)(hidden, rotary)
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
