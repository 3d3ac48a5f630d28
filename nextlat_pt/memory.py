"""An analytic estimate of the memory one rank needs, printed at start-up.

Per rank, in bytes (P = this rank's parameters ≈ total / (TP·PP), dp = data-parallel size):

- weights: P · w, with w = 2 (bf16) or 4 (fp32); ZeRO-3 divides by dp.
- gradients: P · w; ZeRO-2 and 3 divide by dp.
- optimizer: P · (8 + m) for AdamW's two fp32 moments plus, in bf16, an fp32 master copy
  (m = 4; DeepSpeed's ZeRO also keeps its fp32 partition in fp32 training, m = 4); every
  ZeRO stage divides it by dp. SGD keeps only the master copy.
- activations of the layers on this stage for the micro-batches in flight (1 without
  pipelining, PP for 1F1B's first stage): per layer s·b·h·(34 + 5·a·s/h)·(w/2) / TP
  (Korthikanti et al. 2022, Table 2, no sequence parallelism; 2·s·b·h·w per layer with full
  recomputation, plus one layer's full set).
- logits on the last stage: s·b·V/TP · 4 bytes for the fp32 CE and teacher log-probs, plus
  one student buffer per NextLat rollout step.

It ignores allocator fragmentation, communication buffers and the CUDA context (~0.5–1 GB on
a GPU); compare it with the measured peak (benchmarks report the ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

from nextlat_pt.flops import padded_vocab, parameter_counts
from nextlat_pt.model.gpt import ModelSpec


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


def estimate_memory(spec: ModelSpec, seq_len: int, micro_batch_size: int, dp: int,
                    zero_stage: int, horizon: int = 0, optimizer: str = "adamw",
                    bf16: bool = False) -> MemoryEstimate:
    """The estimate for one rank of a `spec.tp` × `spec.pp` × `dp` layout (see module doc)."""
    w = 2 if bf16 else 4
    counts = parameter_counts(spec)
    params = counts["total"] / (spec.tp * spec.pp)
    weights = params * w / (dp if zero_stage >= 3 else 1)
    gradients = params * w / (dp if zero_stage >= 2 else 1)
    per_param = (8 if optimizer == "adamw" else 0) + 4
    opt = params * per_param / dp
    s, b, h, a = seq_len, micro_batch_size, spec.hidden_size, spec.num_heads
    layers = spec.num_layers / spec.pp
    in_flight = spec.pp  # 1F1B: the first stage holds PP micro-batches
    full_layer = s * b * h * (34 + 5 * a * s / h) * (w / 2) / spec.tp
    if spec.recompute:
        activations = (2 * s * b * h * w * layers + full_layer) * in_flight
    else:
        activations = full_layer * layers * in_flight
    vocab = padded_vocab(spec) / spec.tp
    logits = s * b * vocab * 4 * (2 + horizon)
    return MemoryEstimate(weights, gradients, opt, activations, logits)
