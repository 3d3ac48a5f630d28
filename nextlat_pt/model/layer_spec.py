"""Our megatron ModuleSpec: the local (non-TE) GPT layer with our attention and our RMSNorm.

Backends (`model.attention_backend`):
- auto/sdpa/flash: megatron's local layer with `FlashOrSDPAttention` in the core_attention slot.
- local: megatron's own DotProductAttention (the reference the parity test compares against).
- te: TransformerEngine's full layer spec; only when TE is installed.

All but te take our SwiGLU in the MLP's activation slot (`kernels.py`) and megatron's
column/row-parallel linears with a traceable matmul (`linear.py`: same parameters and
checkpoints, a decoder layer that torch.compile takes whole).
"""

from __future__ import annotations

import dataclasses

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from nextlat_pt.model.attention import FlashAttention, SDPAttention
from nextlat_pt.model.kernels import SwiGLU
from nextlat_pt.model.linear import TracedColumnParallelLinear, TracedRowParallelLinear
from nextlat_pt.model.rmsnorm import RMSNorm


def _local_layer_spec(attention: str) -> ModuleSpec:
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    sub = spec.submodules
    attn = sub.self_attention
    linears = dict(linear_qkv=TracedColumnParallelLinear, linear_proj=TracedRowParallelLinear)
    if attention in ("sdpa", "flash"):
        linears["core_attention"] = SDPAttention if attention == "sdpa" else FlashAttention
    attn = dataclasses.replace(attn, submodules=dataclasses.replace(attn.submodules, **linears))
    mlp = dataclasses.replace(
        sub.mlp, submodules=dataclasses.replace(
            sub.mlp.submodules, activation_func=SwiGLU, linear_fc1=TracedColumnParallelLinear,
            linear_fc2=TracedRowParallelLinear))
    sub = dataclasses.replace(
        sub, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm, self_attention=attn, mlp=mlp
    )
    return dataclasses.replace(spec, submodules=sub)


def _te_block_spec(config: TransformerConfig) -> ModuleSpec:
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )
    except ImportError as err:
        raise RuntimeError(
            "model.attention_backend=te needs TransformerEngine; install it on a CUDA machine "
            "or use model.attention_backend=auto"
        ) from err
    return get_gpt_layer_with_transformer_engine_spec()


def layer_spec(config: TransformerConfig, attention: str) -> ModuleSpec:
    """One decoder layer's spec (the MTP heads are built from it, like the trunk's layers).

    `attention` is a resolved backend: sdpa, flash, local or te.
    """
    if attention == "te":
        return _te_block_spec(config)
    return _local_layer_spec(attention)


def block_spec(config: TransformerConfig, attention: str, vp_stage: int | None = None,
               pp_rank: int | None = None) -> ModuleSpec | TransformerBlockSubmodules:
    """The decoder spec for `GPTModel(transformer_layer_spec=...)` on this pipeline stage.

    `attention` is a resolved backend: sdpa, flash, local or te.
    """
    if attention == "te":
        return _te_block_spec(config)
    layer = layer_spec(config, attention)
    num_layers = get_num_layers_to_build(config, vp_stage, pp_rank)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * num_layers,
                                              layer_norm=RMSNorm),
    )
