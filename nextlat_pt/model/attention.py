"""Core attention for megatron's SelfAttention: flash-attn on CUDA, PyTorch SDPA elsewhere.

megatron's local layer spec computes attention with explicit baddbmm + softmax; its fast path
needs TransformerEngine. This module plugs flash-attn (when importable) or
`torch.nn.functional.scaled_dot_product_attention` into the `core_attention` slot instead.
Both take grouped-query attention natively, without repeating the key/value heads.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from torch import Tensor


def flash_attn_importable() -> bool:
    """True when flash-attn imports with its CUDA kernels.

    A plain `import` (not importlib's find_spec): a CPU-only "install" of flash-attn is found
    by find_spec and then fails at import for lack of `flash_attn_2_cuda`.
    """
    try:
        import flash_attn  # noqa: F401
        from flash_attn import flash_attn_func  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, dtype: torch.dtype) -> str:
    """Pick the kernel for `model.attention_backend`: 'auto' -> flash when possible, else sdpa."""
    flash_ok = torch.cuda.is_available() and flash_attn_importable()
    if requested == "auto":
        return "flash" if flash_ok and dtype in (torch.float16, torch.bfloat16) else "sdpa"
    if requested == "flash":
        if not flash_ok:
            raise RuntimeError(
                "model.attention_backend=flash needs CUDA and an importable flash-attn; "
                "install it with `pip install -e .[gpu]` on a GPU machine or set "
                "model.attention_backend=auto"
            )
        if dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                "flash-attn computes in fp16/bf16 only; set precision.dtype=bf16 or "
                "model.attention_backend=sdpa"
            )
    return requested


class FlashOrSDPAttention(MegatronModule):
    """Causal softmax attention over [s, b, heads, head_dim] inputs, megatron's slot contract.

    forward(query [sq, b, np, hn], key/value [sk, b, ng, hn]) -> [sq, b, np*hn], where np and
    ng are the query heads and key/value groups on this tensor-parallel rank.
    """

    backend: str = "sdpa"

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("context parallelism needs TransformerEngine's attention")
        self.attn_mask_type = attn_mask_type
        self.dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(head_dim)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError("attention bias and packed (thd) sequences are not supported")
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        dropout_p = self.dropout_p if self.training else 0.0
        sq, b, nheads, head_dim = query.shape
        # Dropout inside a tensor-parallel region must draw from the model-parallel RNG stream,
        # as megatron's own attention does.
        rng = (
            tensor_parallel.get_cuda_rng_tracker().fork()
            if dropout_p > 0 and not self.config.sequence_parallel
            else contextlib.nullcontext()
        )
        with rng:
            if self.backend == "flash":
                out = self._flash(query, key, value, causal, dropout_p)
            else:
                out = self._sdpa(query, key, value, attention_mask, causal, dropout_p)
        return out.reshape(sq, b, nheads * head_dim)

    def _flash(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, dropout_p: float) -> Tensor:
        from flash_attn import flash_attn_func

        # flash-attn wants [b, s, heads, dim]
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        out = flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=self.softmax_scale,
                              causal=causal)
        return out.transpose(0, 1)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor | None,
              causal: bool, dropout_p: float) -> Tensor:
        # SDPA wants [b, heads, s, dim]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        if q.device.type == "cpu":
            # The CPU flash kernel walks the sequence with the stride of the sbhd layout
            # (b·heads·dim apart): copying to bhsd first is faster fwd+bwd (figures:
            # docs/results/cpu_step.md). CUDA kernels take the strided views as they are.
            q, k, v = (t.contiguous() for t in (q, k, v))
        attn_mask = None
        if attention_mask is not None:
            attn_mask = ~attention_mask  # megatron: True = masked out; SDPA: True = attend
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        return out.permute(2, 0, 1, 3)


class SDPAttention(FlashOrSDPAttention):
    """PyTorch scaled_dot_product_attention (CPU and GPU)."""

    backend = "sdpa"


class FlashAttention(FlashOrSDPAttention):
    """flash-attn's flash_attn_func (CUDA, fp16/bf16)."""

    backend = "flash"
