"""Weight initialisation that does not depend on the parallel layout.

megatron initialises each stage's modules from one RNG stream, so the same seed gives other
weights under PP=2 than under PP=1 (stage 2 never draws the embedding). Here every parameter
is drawn from its own generator, seeded from (seed, its global name), as the full TP=1
tensor, and each rank keeps its shard. Any TP/PP layout then starts from the same model, which
makes runs comparable across layouts and the equivalence tests exact.

Scheme (megatron's, Llama-style): normal(0, σ) for embeddings, attention/MLP input
projections, the LM head and ψ; normal(0, σ/√(2L)) for the projections that feed the
residual stream (attention output, MLP fc2); ones for norm weights.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
from megatron.core import parallel_state

_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")
_RESIDUAL_OUTPUTS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def _global_names(model: torch.nn.Module) -> dict[str, str]:
    """Local parameter name -> name in the full model (global layer numbers)."""
    layers = {}
    for name, module in model.named_modules():
        if hasattr(module, "layer_number") and _LAYER.search(name + "."):
            local = int(_LAYER.search(name + ".").group(1))
            layers[local] = module.layer_number - 1  # megatron numbers layers from 1
    names = {}
    for name, _ in model.named_parameters():
        match = _LAYER.search(name)
        if match:
            local = int(match.group(1))
            name_global = name.replace(f"decoder.layers.{local}.",
                                       f"decoder.layers.{layers[local]}.", 1)
        else:
            name_global = name
        # Copies of the input embedding on the last pipeline stage (ψ's replica, or the tied
        # LM head) start as the embedding itself.
        name_global = name_global.replace("psi_embedding.", "gpt.embedding.word_embeddings.")
        if getattr(model, "tied_head_copy", False) and name_global == "gpt.output_layer.weight":
            name_global = "gpt.embedding.word_embeddings.weight"
        names[name] = name_global
    return names


def _seed_for(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _local_shard(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """This TP rank's piece of a full tensor, as megatron splits it (honouring the stride)."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    stride = getattr(param, "partition_stride", 1)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    chunks = full.chunk(stride * tp, dim=dim)
    return torch.cat(chunks[rank::tp], dim=dim)


def full_shape(param: torch.nn.Parameter) -> list[int]:
    """The TP=1 shape of a (possibly sharded) parameter."""
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= parallel_state.get_tensor_model_parallel_world_size()
    return shape


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int, std: float, num_layers: int) -> None:
    """Re-initialise every parameter of `model` from (seed, global name); see module doc."""
    residual_std = std / math.sqrt(2.0 * num_layers)
    names = _global_names(model)
    for name, param in model.named_parameters():
        if param.ndim == 1:  # norm gains
            param.fill_(1.0)
            continue
        global_name = names[name]
        sigma = residual_std if global_name.endswith(_RESIDUAL_OUTPUTS) else std
        generator = torch.Generator().manual_seed(_seed_for(seed, global_name))
        full = torch.empty(full_shape(param), dtype=torch.float32)
        full.normal_(0.0, sigma, generator=generator)
        param.copy_(_local_shard(full, param).to(param.dtype))
