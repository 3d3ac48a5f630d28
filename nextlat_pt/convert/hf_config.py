"""Architecture: our model config <-> Hugging Face `LlamaConfig`, and what cannot be converted.

Our GPT is a Llama: RMSNorm, SwiGLU (SiLU), rotate-half RoPE, no biases, optional tied
embeddings and grouped-query attention. Anything else on either side is refused with a
ConvertError naming the field, rather than exported into a model that computes something else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nextlat_pt.config import Config
from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nextlat_pt.model.shape import ModelShape


def shape_from_config(cfg: Config, vocab_size: int) -> ModelShape:
    """Our run config -> the shared shape; refuses settings a Llama cannot express."""
    m = cfg.model
    if m.hidden_size % m.num_heads:
        raise ConvertError(f"model.hidden_size={m.hidden_size} is not divisible by "
                           f"model.num_heads={m.num_heads}")
    # NextLatGPT hands megatron int(rotary_base): export what the model computes. ψ and
    # MTP's extra heads and JTP's Fetch are not part of a Llama.
    return dataclasses.replace(cfg.model_shape(vocab_size), psi_width=0, mtp_heads=1,
                               jtp_steps=0,
                               rotary_base=float(int(m.rotary_base)))


def llama_config(shape: ModelShape, dtype: str):
    """A transformers `LlamaConfig` for the shape (special ids: ours, fixed)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_query_groups,
        head_dim=shape.head_dim,
        hidden_act="silu",
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.norm_eps,
        rope_theta=shape.rotary_base,
        tie_word_embeddings=shape.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def _get(config: Any, name: str, default: Any = None) -> Any:
    return getattr(config, name, default)


def shape_from_llama(config: Any) -> ModelShape:
    """A transformers config -> the shared shape; refuses what our GPT cannot compute."""
    model_type = _get(config, "model_type")
    if model_type != "llama":
        raise ConvertError(f"model_type {model_type!r} is not supported: only Llama "
                           f"(LlamaForCausalLM) folders convert to nextlat_pt")
    archs = _get(config, "architectures") or ["LlamaForCausalLM"]
    if archs != ["LlamaForCausalLM"]:
        raise ConvertError(f"architectures {archs} are not supported; expected "
                           f"['LlamaForCausalLM']")
    act = _get(config, "hidden_act", "silu")
    if act != "silu":
        raise ConvertError(f"hidden_act={act!r} is not supported: our MLP is SwiGLU (silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if _get(config, flag, False):
            raise ConvertError(f"{flag}=true is not supported: our layers have no biases")
    rope = _get(config, "rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConvertError(f"RoPE scaling {rope_type!r} is not supported (plain RoPE only); "
                           f"drop rope_scaling from config.json only if you accept another "
                           f"model")
    theta = rope.get("rope_theta", _get(config, "rope_theta", 10000.0))
    if float(theta) != int(theta):
        raise ConvertError(f"rope_theta={theta} is not an integer; megatron's RoPE takes an "
                           f"integer base")
    heads = config.num_attention_heads
    hidden = config.hidden_size
    head_dim = _get(config, "head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise ConvertError(f"head_dim={head_dim} × num_attention_heads={heads} != "
                           f"hidden_size={hidden}: not supported (our attention width is "
                           f"the model width)")
    groups = _get(config, "num_key_value_heads") or heads
    if heads % groups:
        raise ConvertError(f"num_key_value_heads={groups} does not divide "
                           f"num_attention_heads={heads}")
    if _get(config, "pretraining_tp", 1) not in (None, 1):
        raise ConvertError("pretraining_tp > 1 is not supported")
    return ModelShape(
        num_layers=config.num_hidden_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_query_groups=groups,
        ffn_hidden_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        tie_embeddings=bool(_get(config, "tie_word_embeddings", False)),
        rotary_base=float(theta),
        norm_eps=float(config.rms_norm_eps),
    )


def model_overrides(shape: ModelShape) -> dict[str, Any]:
    """Our `model.*` config values for a shape (num_query_groups/ffn explicit)."""
    return {
        "model.num_layers": shape.num_layers,
        "model.hidden_size": shape.hidden_size,
        "model.num_heads": shape.num_heads,
        "model.num_query_groups": shape.num_query_groups,
        "model.ffn_hidden_size": shape.ffn_hidden_size,
        "model.max_position_embeddings": shape.max_position_embeddings,
        "model.tie_embeddings": shape.tie_embeddings,
        "model.rotary_base": shape.rotary_base,
        "model.norm_eps": shape.norm_eps,
    }
