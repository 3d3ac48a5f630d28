"""Tensor layouts: megatron-core's fused GPT weights <-> Hugging Face Llama's separate ones.

Pure functions on full (TP=1) tensors; the checkpoint reader already undoes tensor
parallelism (dist_checkpointing stores global tensors: QKV with whole query groups
concatenated in order, SwiGLU's fc1 as [gate_full; up_full]).

The two traps every megatron -> HF converter meets:
- megatron's fused QKV is interleaved per query group: for each of the `ng` groups, its
  nh/ng query heads, then its key head, then its value head, each `head_dim` rows.
- megatron's fc1 is [gate; up] along the output dimension.
RoPE is rotate-half in both, so no q/k permutation is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_qkv(qkv: Tensor, num_heads: int, num_groups: int, head_dim: int
              ) -> tuple[Tensor, Tensor, Tensor]:
    """megatron's interleaved [ng·(nh/ng + 2)·d, D] -> HF's q [nh·d, D], k, v [ng·d, D]."""
    per_group = num_heads // num_groups
    hidden = qkv.shape[-1]
    expected = num_groups * (per_group + 2) * head_dim
    if qkv.shape[0] != expected:
        raise ValueError(f"fused QKV has {qkv.shape[0]} rows, expected {expected} for "
                         f"{num_heads} heads, {num_groups} groups, head_dim {head_dim}")
    grouped = qkv.reshape(num_groups, per_group + 2, head_dim, hidden)
    q = grouped[:, :per_group].reshape(num_heads * head_dim, hidden)
    k = grouped[:, per_group].reshape(num_groups * head_dim, hidden)
    v = grouped[:, per_group + 1].reshape(num_groups * head_dim, hidden)
    return q.contiguous(), k.contiguous(), v.contiguous()


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, num_heads: int, num_groups: int, head_dim: int
             ) -> Tensor:
    """The inverse of `split_qkv`: HF's q, k, v -> megatron's interleaved fused QKV."""
    per_group = num_heads // num_groups
    hidden = q.shape[-1]
    q = q.reshape(num_groups, per_group, head_dim, hidden)
    k = k.reshape(num_groups, 1, head_dim, hidden)
    v = v.reshape(num_groups, 1, head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden).contiguous()


def split_fc1(fc1: Tensor) -> tuple[Tensor, Tensor]:
    """megatron's SwiGLU fc1 [gate; up] -> (gate_proj, up_proj)."""
    if fc1.shape[0] % 2:
        raise ValueError(f"SwiGLU fc1 has an odd number of rows ({fc1.shape[0]})")
    gate, up = fc1.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def fuse_fc1(gate: Tensor, up: Tensor) -> Tensor:
    """(gate_proj, up_proj) -> megatron's fc1 [gate; up]."""
    return torch.cat([gate, up], dim=0).contiguous()


def unpad_vocab(weight: Tensor, vocab_size: int) -> Tensor:
    """Drop the rows megatron adds to make the vocabulary divisible (never real tokens)."""
    if weight.shape[0] < vocab_size:
        raise ValueError(f"embedding has {weight.shape[0]} rows, fewer than the tokenizer's "
                         f"{vocab_size} tokens")
    return weight[:vocab_size].contiguous()


def pad_vocab(weight: Tensor, padded_size: int) -> Tensor:
    """Add zero rows up to megatron's padded vocabulary (their logits are never targets)."""
    if weight.shape[0] > padded_size:
        raise ValueError(f"embedding has {weight.shape[0]} rows, more than the padded "
                         f"vocabulary {padded_size}")
    pad = weight.new_zeros(padded_size - weight.shape[0], weight.shape[1])
    return torch.cat([weight, pad], dim=0).contiguous()


# megatron dist_checkpointing keys (layers stacked on a leading axis) -> HF names per layer.
MEGATRON_PREFIX = "gpt."
EMBEDDING = "gpt.embedding.word_embeddings.weight"
FINAL_NORM = "gpt.decoder.final_layernorm.weight"
OUTPUT_LAYER = "gpt.output_layer.weight"
LAYER_KEYS = {
    "input_norm": "gpt.decoder.layers.self_attention.linear_qkv.layer_norm_weight",
    "qkv": "gpt.decoder.layers.self_attention.linear_qkv.weight",
    "proj": "gpt.decoder.layers.self_attention.linear_proj.weight",
    "mlp_norm": "gpt.decoder.layers.mlp.linear_fc1.layer_norm_weight",
    "fc1": "gpt.decoder.layers.mlp.linear_fc1.weight",
    "fc2": "gpt.decoder.layers.mlp.linear_fc2.weight",
}
PSI_KEYS = {"norm.weight": "psi.norm.weight", "fc1.weight": "psi.fc1.weight",
            "fc2.weight": "psi.fc2.weight", "fc3.weight": "psi.fc3.weight"}


def hf_layer_names(layer: int) -> dict[str, str]:
    """HF tensor names of one decoder layer."""
    p = f"model.layers.{layer}."
    return {
        "input_norm": p + "input_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def megatron_layer_to_hf(layer: int, tensors: dict[str, Tensor], num_heads: int,
                         num_groups: int, head_dim: int) -> dict[str, Tensor]:
    """One layer's megatron tensors (keyed as LAYER_KEYS) -> HF name -> tensor."""
    names = hf_layer_names(layer)
    q, k, v = split_qkv(tensors["qkv"], num_heads, num_groups, head_dim)
    gate, up = split_fc1(tensors["fc1"])
    return {
        names["input_norm"]: tensors["input_norm"],
        names["q"]: q, names["k"]: k, names["v"]: v,
        names["o"]: tensors["proj"],
        names["mlp_norm"]: tensors["mlp_norm"],
        names["gate"]: gate, names["up"]: up,
        names["down"]: tensors["fc2"],
    }


def hf_layer_to_megatron(layer: int, hf: dict[str, Tensor], num_heads: int, num_groups: int,
                         head_dim: int) -> dict[str, Tensor]:
    """One layer's HF tensors -> megatron tensors keyed as LAYER_KEYS."""
    names = hf_layer_names(layer)
    return {
        "input_norm": hf[names["input_norm"]],
        "qkv": fuse_qkv(hf[names["q"]], hf[names["k"]], hf[names["v"]], num_heads, num_groups,
                        head_dim),
        "proj": hf[names["o"]],
        "mlp_norm": hf[names["mlp_norm"]],
        "fc1": fuse_fc1(hf[names["gate"]], hf[names["up"]]),
        "fc2": hf[names["down"]],
    }
