"""Eager kernels for two of megatron's slots that its torch fallbacks fill slowly.

Without TransformerEngine, megatron-core computes RoPE and SwiGLU with generic tensor code
that copies more than the maths needs; on a CPU that made our step slower than a plain
`LlamaForCausalLM` of the same shape (`bench/reference_step.py`). Both kernels below go
through megatron's own extension points, so the layers, their parameters and checkpoints are
unchanged:

- RoPE: megatron calls `rope_utils.fused_apply_rotary_pos_emb` when
  `config.apply_rope_fusion` is set; TransformerEngine fills that slot on a GPU. When TE is
  absent we fill it with `apply_rotary`. megatron's fallback slices the rotated part off,
  builds `rotate_half(t)` with a concatenation, then concatenates the (empty) unrotated tail
  back: two full copies of q and k forward, more backward. Ours writes each half of the output
  once and saves nothing for backward but cos and sin.
- SwiGLU: megatron's MLP calls `submodules.activation_func` on the whole fc1 output when
  `config.use_te_activation_func` is set. Its fallback chunks the output and lets autograd
  stitch the two halves' gradients back with a concatenation; ours writes both halves of the
  gradient in place. It saves what the fallback saved (the fc1 output and silu of the gate).

Arithmetic is the same as the fallbacks': each output element is the same products summed in
the same order, so results are bit-identical to megatron's unfused path (tests pin it).

Under `torch.compile` (`train.compile`, nextlat_pt/train/compile.py) both take the plain
differentiable form instead: the eager kernels write into halves of a preallocated output
(`out=` on a strided view), which dynamo cannot trace, and inductor fuses the plain form
(RoPE forward and backward into one pass each, SwiGLU with its neighbours) better than any
hand-ordered eager sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.transformer import TransformerConfig
from torch import Tensor, nn


def _rotate(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """[t1·cos − t2·sin, t2·cos + t1·sin] over the last dimension's halves, written once."""
    t1, t2 = t.chunk(2, dim=-1)
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(t1, cos, out=o1)
    o1.sub_(t2 * sin)
    torch.mul(t2, cos, out=o2)
    o2.add_(t1 * sin)
    return out


class _Rotary(torch.autograd.Function):
    """RoPE: rotate each (t1, t2) pair of t = [t1, t2] by θ; saves only cos θ and sin θ."""

    @staticmethod
    def forward(ctx, t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(t, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        # The transpose of a rotation by θ is the rotation by −θ (negation is exact, so the
        # gradient is the fallback's to the bit).
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rotary(t: Tensor, freqs: Tensor, interleaved: bool = False) -> Tensor:
    """RoPE on t [s, b, heads, dim] with megatron's freqs [s, 1, 1, dim] = [θ, θ] (bshd).

    The signature of TransformerEngine's `fused_apply_rotary_pos_emb`, whose slot it fills.
    """
    if interleaved:
        raise NotImplementedError("interleaved RoPE is not supported by nextlat_pt's kernel")
    rot_dim = freqs.shape[-1]
    if rot_dim != t.shape[-1]:
        raise NotImplementedError("partial RoPE (rotary_percent < 1) is not supported")
    half = freqs[..., : rot_dim // 2]
    cos, sin = torch.cos(half).to(t.dtype), torch.sin(half).to(t.dtype)
    if torch.compiler.is_compiling():
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat((t1 * cos - t2 * sin, t2 * cos + t1 * sin), dim=-1)
    return _Rotary.apply(t, cos, sin)


def install_rope_kernel() -> None:
    """Fill megatron's fused-RoPE slot with `apply_rotary` unless TransformerEngine already
    did; `apply_rope_fusion=True` then selects whichever kernel holds it."""
    if rope_utils.fused_apply_rotary_pos_emb is None:
        rope_utils.fused_apply_rotary_pos_emb = apply_rotary


class _SwiGLU(torch.autograd.Function):
    """y = silu(a) · b for the fc1 output x = [a, b] (gate first, megatron's layout)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        silu_a = F.silu(a)
        ctx.save_for_backward(x, silu_a)
        return silu_a * b

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, silu_a = ctx.saved_tensors
        a, b = x.chunk(2, dim=-1)
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        grad_a, grad_b = grad_x.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * b, a, grad_input=grad_a)
        torch.mul(grad, silu_a, out=grad_b)
        return grad_x


class SwiGLU(nn.Module):
    """megatron's MLP activation slot (`MLPSubmodules.activation_func`): SwiGLU of fc1's output.

    Under TP each rank's fc1 shard holds its own [gate, up] halves (megatron's stride-2
    layout), so the activation is local.
    """

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        """[..., 2F] -> [..., F]."""
        if torch.compiler.is_compiling():
            a, b = x.chunk(2, dim=-1)
            return F.silu(a) * b
        return _SwiGLU.apply(x)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: dict | None = None) -> dict:
        """No state: megatron's MLP asks every child for its checkpoint entries."""
        return {}
