"""An analytic estimate of the memory one rank needs, printed at start-up.

Per rank, in bytes (P = this rank's parameters ≈ total / (TP·PP), dp = data-parallel size,
w = 2 (bf16) or 4 (fp32) bytes per element):

- weights: P · w; ZeRO-3 divides by dp.
- gradients: P · w; ZeRO-2 and 3 divide by dp. bf16 weights with fp32 gradient
  accumulation (`precision.grad_accum_dtype`, the default) add the fp32 buffers the
  gradients accumulate in, P · 4 (ZeRO-1: DeepSpeed's bf16 optimizer keeps them whole;
  ZeRO-2 and 3 divide them by dp).
- optimizer: P · (8 + m) for AdamW's two fp32 moments plus, under DeepSpeed, its fp32 copy of
  the parameters (m = 4: the master weights in bf16, ZeRO's flat partition in fp32); every
  ZeRO stage divides it by dp. One fp32 data-parallel rank without PP trains without
  DeepSpeed (`parallel/local_engine.py`): no copy, m = 0. SGD keeps only the copy. Muon keeps
  one fp32 momentum (4 bytes) on its matrices (`flops.muon_matrix_parameters`) and AdamW's
  two moments on the rest.
- activations saved for backward by the layers of this stage, per micro-batch in flight (1
  without pipelining, PP for 1F1B's first stage), counted from what our layer saves per
  token: the two RMSNorms' inputs and outputs (4h); q, k, v, the attention output and the
  output projection's input (3h + 2·h_kv; flash-attn/SDPA keep no s×s matrix); fc1's
  output, silu of the gate and fc2's input (4F). Sharded by TP except the norms (replicated
  without sequence parallelism). Full recomputation keeps each layer's input (h) plus one
  layer's full set. Backward adds one layer's worth: the gradients of the activations of
  the layer being back-propagated, alive beside what is still saved.
  NextLat adds, on the last stage, ψ's saved activations per rollout step,
  s·b·(8h + 4H/TP)·w (the concatenation's norm input and output and fc1's input, four
  H-wide hidden activations, ĥ and the KL's gradient to ĥ), and one step's worth of
  gradients in backward.
  MTP's extra heads (n_h − 1 layers on the last stage): with the heads recomputed in
  backward (`nextlat.mtp_recompute_heads`) one layer's full set, the head being
  back-propagated; without, each head's full set.
  JTP's Fetch (d steps) keeps, per token, (d + 1) slots' worth of its attention block:
  the slots, their norm, the residual sum and the output norm's input (4h), q, k, v and the
  attention output (4h/TP): s·b·(d + 1)·(4h + 4h/TP)·w.
- logits and loss on the last stage: the logits s·b·V/TP·w, which the chunked CE
  (`model/vocab_parallel.py`) overwrites with their gradient, plus its fp32 chunk buffers
  (CE_CHUNK_BUFFERS × 1024 × V/TP); NextLat keeps the logits as the KL's teacher, so its
  CE writes the gradient to a second s·b·V/TP·w buffer, and adds the KL's working set,
  three fp32 buffers of kl_chunk_tokens × V/TP (`model/frozen_head_kl.py`: bounded by the
  chunk, not by d). MTP adds one more s·b·V/TP·w per extra head alive at once: one with the
  heads recomputed, n_h − 1 without; JTP likewise per step (one recomputed, d without).

It ignores allocator fragmentation, communication buffers and the CUDA context (~0.5–1 GB on
a GPU); compare it with the measured peak (benchmarks report the ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

from nextlat_pt.flops import muon_matrix_parameters, padded_vocab, parameter_counts
from nextlat_pt.model.frozen_head_kl import DEFAULT_CHUNK_TOKENS
from nextlat_pt.model.gpt import ModelSpec
from nextlat_pt.model.vocab_parallel import DEFAULT_CE_CHUNK_TOKENS
from nextlat_pt.parallel.local_engine import wants_local_engine

KL_CHUNK_BUFFERS = 3  # fp32 [chunk, V/tp]: the student logits, log p and p
CE_CHUNK_BUFFERS = 2  # fp32 [chunk, V/tp]: the chunk's logits (then softmax) and a temporary


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank, by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    def describe(self) -> str:
        gib = 1024 ** 3
        return (f"{self.total / gib:.2f} GiB (weights {self.weights / gib:.2f}, grads "
                f"{self.gradients / gib:.2f}, optimizer {self.optimizer / gib:.2f}, "
                f"activations {self.activations / gib:.2f}, logits {self.logits / gib:.2f})")


def layer_activation_elements(spec: ModelSpec) -> float:
    """Elements one transformer layer saves for backward per token on one TP rank."""
    h, tp = spec.hidden_size, spec.tp
    kv = h * spec.num_query_groups // spec.num_heads
    norms = 4 * h  # two RMSNorms: input and normalised output each (replicated over TP)
    attention = (3 * h + 2 * kv) / tp  # q, k, v, attention output, projection input
    mlp = 4 * spec.ffn_hidden_size / tp  # fc1 output (2F), silu(gate) (F), fc2 input (F)
    return norms + attention + mlp


def estimate_memory(spec: ModelSpec, seq_len: int, micro_batch_size: int, dp: int,
                    zero_stage: int, horizon: int = 0, optimizer: str = "adamw",
                    bf16: bool = False,
                    kl_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                    grad_accum_dtype: str = "fp32",
                    mtp_recompute_heads: bool = True) -> MemoryEstimate:
    """The estimate for one rank of a `spec.tp` × `spec.pp` × `dp` layout (see module doc).

    `horizon` is NextLat's d (0: next-token only, no ψ); MTP's heads come from the spec."""
    w = 2 if bf16 else 4
    counts = parameter_counts(spec)
    params = counts["total"] / (spec.tp * spec.pp)
    weights = params * w / (dp if zero_stage >= 3 else 1)
    gradients = params * w / (dp if zero_stage >= 2 else 1)
    if bf16 and grad_accum_dtype == "fp32":
        gradients = params * w + params * 4 / (dp if zero_stage >= 2 else 1)
    copy = 0 if wants_local_engine(dp, spec.pp, bf16) else 4
    moments = 8 if optimizer == "adamw" else 0
    if optimizer == "muon":  # one fp32 momentum on Muon's matrices, two moments elsewhere
        muon_share = muon_matrix_parameters(spec) / counts["total"]
        moments = 4 * muon_share + 8 * (1 - muon_share)
    opt = params * (moments + copy) / dp
    tokens = seq_len * micro_batch_size
    layers = spec.num_layers / spec.pp
    in_flight = spec.pp  # 1F1B: the first stage holds PP micro-batches
    full_layer = tokens * layer_activation_elements(spec) * w
    if spec.recompute:
        activations = (tokens * spec.hidden_size * w * layers + full_layer) * in_flight
    else:
        activations = full_layer * layers * in_flight
    activations += full_layer  # backward: the gradients of the layer being back-propagated
    vocab = padded_vocab(spec) / spec.tp
    logits = tokens * vocab * w * (2 if horizon > 0 else 1)
    logits += CE_CHUNK_BUFFERS * min(DEFAULT_CE_CHUNK_TOKENS, tokens) * vocab * 4
    if horizon > 0:  # on the last stage: ψ's rollout and the KL's chunk buffers
        psi_step = tokens * (8 * spec.hidden_size + 4 * spec.psi_width / spec.tp) * w
        activations += psi_step * (horizon + 1)  # + the gradients of the step in backward
        logits += KL_CHUNK_BUFFERS * min(kl_chunk_tokens, tokens) * vocab * 4
    extra_heads = spec.mtp_heads - 1
    heads_alive = min(extra_heads, 1) if mtp_recompute_heads else extra_heads
    activations += full_layer * heads_alive
    logits += tokens * vocab * w * heads_alive
    if spec.jtp_steps:  # on the last stage: Fetch's slots and the steps' logits
        d = spec.hidden_size
        activations += tokens * (spec.jtp_steps + 1) * (4 * d + 4 * d / spec.tp) * w
        steps_alive = 1 if mtp_recompute_heads else spec.jtp_steps
        logits += tokens * vocab * w * steps_alive
    return MemoryEstimate(weights, gradients, opt, activations, logits)
