"""Our RoPE and SwiGLU kernels (`nextlat_pt/model/kernels.py`) against megatron's own torch
fallbacks: the same outputs and gradients to the bit (fp32 and bf16), float64 gradcheck, and
the model actually running them through megatron's slots."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from nextlat_pt.model.gpt import ModelSpec, NextLatGPT
from nextlat_pt.model.kernels import SwiGLU, apply_rotary


def _freqs(seq: int, dim: int) -> torch.Tensor:
    """megatron's rotary table [s, 1, 1, dim] = [θ, θ] for positions 0..seq-1."""
    rope = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=10000,
                           use_cpu_initialization=True)
    freqs = rope.get_freqs_non_repeated(seq)  # its forward moves the table to CUDA
    return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]


def _megatron_swiglu(x: torch.Tensor) -> torch.Tensor:
    """megatron's MLP glu() fallback for silu with gated_linear_unit."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


def _forward_backward(fn, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().requires_grad_()
    out = fn(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_megatron_fallback_to_the_bit(dtype):
    seq, batch, heads, dim = 24, 3, 4, 32
    freqs = _freqs(seq, dim)
    gen = torch.Generator().manual_seed(0)
    # a strided input, as megatron's q/k views of the fused QKV projection are
    t = torch.randn(seq, batch, heads, 2 * dim, generator=gen).to(dtype)[..., :dim]
    grad = torch.randn(seq, batch, heads, dim, generator=gen).to(dtype)

    def reference(x):
        return rope_utils._apply_rotary_pos_emb_bshd(x, freqs)

    ours_out, ours_grad = _forward_backward(lambda x: apply_rotary(x, freqs), t, grad)
    ref_out, ref_grad = _forward_backward(reference, t, grad)
    assert ours_out.dtype == dtype and ours_out.is_contiguous()
    assert torch.equal(ours_out, ref_out)
    assert torch.equal(ours_grad, ref_grad)


def test_rope_gradcheck_float64():
    freqs = _freqs(6, 8)
    t = torch.randn(6, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: apply_rotary(x, freqs), (t,))


def test_rope_refuses_what_it_does_not_implement():
    freqs = _freqs(4, 8)
    with pytest.raises(NotImplementedError, match="interleaved"):
        apply_rotary(torch.randn(4, 1, 1, 8), freqs, interleaved=True)
    with pytest.raises(NotImplementedError, match="partial RoPE"):
        apply_rotary(torch.randn(4, 1, 1, 16), freqs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_is_megatron_fallback_to_the_bit(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 2 * 40, generator=gen).to(dtype)
    grad = torch.randn(16, 3, 40, generator=gen).to(dtype)
    ours_out, ours_grad = _forward_backward(SwiGLU(), x, grad)
    ref_out, ref_grad = _forward_backward(_megatron_swiglu, x, grad)
    assert torch.equal(ours_out, ref_out)
    assert torch.equal(ours_grad, ref_grad)


def test_swiglu_gradcheck_float64():
    x = torch.randn(5, 2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU(), (x,))


def test_model_runs_our_kernels_and_matches_the_fallback_model(parallel_tp1):
    """A whole model through our slots equals the same weights through megatron's fallbacks."""
    spec = ModelSpec(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=2,
                     ffn_hidden_size=96, vocab_size=256, max_position_embeddings=32,
                     attention_backend="sdpa")
    ours = NextLatGPT(spec)
    assert ours.config.apply_rope_fusion and rope_utils.fused_apply_rotary_pos_emb is apply_rotary
    assert isinstance(ours.gpt.decoder.layers[0].mlp.activation_func, SwiGLU)

    fallback = NextLatGPT(spec)
    fallback.load_state_dict(ours.state_dict())
    for module in fallback.modules():  # megatron reads these flags at call time
        if hasattr(module, "config"):
            module.config.apply_rope_fusion = False
            module.config.use_te_activation_func = False
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(2))
    out, ref = ours(tokens), fallback(tokens)
    assert torch.equal(out.logits, ref.logits)
    out.logits.pow(2).mean().backward()
    ref.logits.pow(2).mean().backward()
    ref_grads = dict(fallback.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param.grad, ref_grads[name].grad), name


def test_swiglu_adds_nothing_to_the_checkpoint(parallel_tp1):
    spec = ModelSpec(num_layers=1, hidden_size=32, num_heads=2, num_query_groups=2,
                     ffn_hidden_size=64, vocab_size=128, max_position_embeddings=16)
    model = NextLatGPT(spec)
    keys = set(model.sharded_state_dict())
    assert not [k for k in keys if "activation_func" in k]
    assert "gpt.decoder.layers.0.mlp.linear_fc1.weight" in keys
