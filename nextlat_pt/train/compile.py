"""`train.compile`: torch.compile where it pays, one decoder layer at a time.

What is compiled, and why there:
- each decoder layer's forward (its backward follows through AOTAutograd): the layer is
  where the memory-bound work between the GEMMs lives (RMSNorm, RoPE, SwiGLU, the residual
  adds, the attention layout changes), and every layer is the same graph, so one
  compilation serves all of them. The layer compiles whole: megatron's linears are replaced
  by traceable ones (`model/linear.py`), RoPE and SwiGLU take their plain form under
  compile (`model/kernels.py`); tests/unit/test_compile.py pins "one graph, no breaks".
- ψ (NextLat's latent dynamics, on the last stage): its single-step `forward` (d = 1) and
  its rollout `step` (d > 1), the same way; the rollout's steps see sequences one token
  shorter each, so `step` compiles with a dynamic sequence length after the first
  recompilation instead of once per step.
- the KL's per-chunk V-wide passes (`model/frozen_head_kl.py:_chunk_terms`: the teacher's
  and student's log-probabilities, Σ p (log p − log q), q − p): a pure function the loss
  compiles itself when `NextLatLossConfig.fused_kl` is set; the chunk loop, the matmuls
  with the frozen head and the TP all-reduces stay eager.
- nothing else: the embedding, the LM head and the CE keep their eager,
  chunked kernels (their memory is bounded by the chunk, not by a compiled graph), and the
  pipeline schedule, DeepSpeed's hooks and the optimizer stay Python.

`auto` compiles on CUDA only: on a CPU inductor's generated loops are not faster than
PyTorch's kernels at our shapes, and compiling costs a minute per start.
"""

from __future__ import annotations

import torch

# A model's layers share one graph; the limit only has to cover the few variants one run
# meets (training, validation without grad, a last partial micro-batch).
RECOMPILE_LIMIT = 16


def compile_wanted(setting: str, device: torch.device) -> bool:
    """`train.compile` resolved for this device: auto -> on for CUDA only."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "true"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The megatron decoder layers of a NextLatGPT (this pipeline stage's, with the extra
    MTP heads' layers on the last stage)."""
    heads = list(model.mtp_heads.layers) if model.mtp_heads is not None else []
    return list(model.gpt.decoder.layers) + heads


def compile_layers(model: torch.nn.Module) -> int:
    """Replace each decoder layer's forward by its compiled version; returns how many.

    The compiled function is set on the instance, so module hooks (DeepSpeed's, the
    profiler marks of bench/step_launches.py) stay outside the graph, and parameters,
    state dicts and checkpoints are untouched.
    """
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                RECOMPILE_LIMIT)
    layers = decoder_layers(model)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=False)
    return len(layers)


def compile_psi(model: torch.nn.Module) -> bool:
    """Compile ψ's one-step forward and its rollout step, if this stage holds ψ; returns
    whether it did. As for the layers, the compiled functions are set on the instance."""
    psi = getattr(model, "psi", None)
    if psi is None:
        return False
    psi.forward = torch.compile(psi.forward, dynamic=False)
    psi.step = torch.compile(psi.step, dynamic=None)
    return True
