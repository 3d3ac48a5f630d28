"""FLOP accounting for NTP, NextLat, MTP and JTP training (docs/method.md §2, §3, §7, §8).

Everything here is analytic: a function of the `ModelSpec`, the sequence length T and the
rollout horizon d. Counts are **per token of training** (forward + backward), for the whole
model (summed over tensor-parallel ranks; per rank the sharded parts divide by TP). A
multiply-add is 2 FLOPs. Notation: L layers, D width, n heads of size D/n, g key/value
groups, F the SwiGLU width, V the **padded** vocabulary (what the LM head computes:
`padded_vocab_size(vocab, make_vocab_size_divisible_by, tp)`), H the ψ width.

Terms
-----
trunk_matmul = 6 · P_mm,    P_mm = L · (D·(D + 2·g·D/n) + D·D + 3·D·F) + V·D
    Every linear layer of the transformer: fused QKV with grouped-query attention
    (D → D queries + 2·g·D/n keys/values), the output projection D → D, SwiGLU's three
    matrices (fc1 is D → 2F, fc2 F → D), and the LM head D → V. A linear layer with P weights
    costs 2P FLOPs per token forward and 4P backward (input gradient + weight gradient), the
    standard 6·P. The head costs 6·V·D even with tied embeddings (the weight is shared, the
    matmul is not). The first layer's input gradient is counted: the embedding is trainable.

attention = 6 · L · D · (T + 1)
    Scores QKᵀ and the weighted sum AV. With full (non-causal) attention each query meets T
    keys: forward 2·T·D (QKᵀ, all heads together) + 2·T·D (AV) per token per layer, and the
    backward costs twice the forward (dQ and dK for the scores, dA and dV for the values), so
    12·L·D·T per token. Causal attention is counted as what it needs: query t (0-based)
    meets t + 1 keys, (T + 1)/2 on average, i.e. half of the full count plus the diagonal:
    6·L·D·(T + 1) ≈ 6·L·T·D. (Flash/SDPA kernels skip the masked blocks, so this is close to
    what they execute; megatron's `local` backend computes the full square and masks it, use
    `attention_flops_per_token(..., causal=False)` for that.) GQA does not change it: every
    query head still attends. Softmax, masking and RoPE are neglected (elementwise).

psi = 6 · (P_ψ − D·H) · Σ_{i=1..d} (T − i)/T + 6 · D·H · (T − 1)/T,
      P_ψ = 2D·H + H·H + H·D
    ψ's three bias-free matmuls (2D → H → H → D) at every rollout step, forward + backward
    with both weight and input gradients (the input gradient flows back through the
    recursion into h and E(x)): 6·P_ψ per position. Rollout step i covers T − i of the T
    positions (positions t ≤ T−1−i have a target h_{t+i}), so per token of the sequence it is
    weighted by (T − i)/T exactly, not by 1. The E(x) half of the first layer (D·H) does not
    depend on the rollout state: ψ computes it once, for the T − 1 tokens that are some
    position's next token (`model/psi.py`), whatever d.

kl_head = 4 · D · V · Σ_{i=1..d} (T − i)/T      (0 when the KL term is off, λ_KL = 0)
    The student logits ĥ·Wᵀ through the frozen LM head at each rollout step: forward 2·D·V,
    backward the input gradient only, 2·D·V (the head is detached: no weight gradient).

mtp_heads = (n_h − 1) · (6 · P_layer + 6 · V·D + 6 · D · (T + 1))
    Multi-token prediction with n_h heads (`ModelSpec.mtp_heads`; head 1 is the trunk's last
    layer, already in the trunk): each extra head is one more transformer layer over every
    position (P_layer its matmul weights, plus its causal attention) and one more LM-head
    product. Its CE covers T − k + 1 positions, but the layer and the logits are computed for
    all T. With `nextlat.mtp_recompute_heads` (the default) the hardware also runs each extra
    head's forward a second time in backward, a third of this term more; like the layers'
    recomputation below, that is not counted.

jtp_fetch = 6 · 4·D² · (d + 1) + 6 · D · (d + 1)(d + 2) + 6 · V·D · d
    Joint multi-token prediction with d steps (`ModelSpec.jtp_steps`): Fetch runs at every
    position over d + 1 slots (h_t and the next d tokens' embeddings): its q/k/v (D → 3D) and
    output (D → D) projections on every slot, causal attention among the slots (slot j meets
    j + 1 keys: forward 4·D·(j + 1), backward twice that), and one LM-head product per
    fetched state. As for MTP, the recomputed forward of each step's logits (the default) is
    not counted.

total = trunk_matmul + attention + psi + kl_head + mtp_heads + jtp_fetch

Neglected (state of the accounting, not of the cost on every machine)
---------------------------------------------------------------------
- Elementwise work: RMSNorms (ψ's 2D norm included), SiLU/GELU, residual adds, RoPE, softmax
  of the scores, the embedding lookups (E(x) is looked up a second time for ψ).
- Work over the vocabulary that is not a matmul: the CE (log-softmax of the logits), the
  teacher log-softmax (once per micro-batch) and, per rollout step, the student log-softmax
  and the KL sum. These are O(V) per position, i.e. a fraction of order 10/D of the head's
  matmul: small on paper, but memory-bound, so on a CPU or at small D they cost far more
  wall-clock time than their FLOPs suggest.
- The SmoothL1 term, masks, the optimizer step (≈ 10-20 FLOPs per parameter per step, not per
  token), gradient clipping, communication.
- Activation recomputation (`ModelSpec.recompute`): these are model FLOPs; recomputing the
  layers adds about one more forward of the blocks (2·P_blocks + a third of `attention`) that
  the hardware executes, for NTP and NextLat alike (ψ is not recomputed).

Scope: `parameter_counts` is the whole model as built with PP = 1. With PP > 1 the last stage
also holds a copy of the input embedding for ψ (untied) or of the tied head; those copies are
replicas, not counted here.

The NextLat/NTP ratio is total(NextLat, d) / total(NTP) on the same trunk; see
`nextlat_to_ntp_ratio` and `FlopsBreakdown.ratio_to` (MTP: the spec with `mtp_heads` = n_h
against the same spec with 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nextlat_pt.model.gpt import ModelSpec, padded_vocab_size
from nextlat_pt.model.jtp_fetch import fetch_parameter_count


@dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs (forward + backward) per token, by term; `total` is their sum."""

    trunk_matmul: float
    attention: float
    psi: float = 0.0
    kl_head: float = 0.0
    mtp_heads: float = 0.0
    jtp_fetch: float = 0.0
    total: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "total",
            self.trunk_matmul + self.attention + self.psi + self.kl_head + self.mtp_heads
            + self.jtp_fetch
        )

    @property
    def ntp_part(self) -> float:
        """What plain next-token training computes: the trunk and its attention."""
        return self.trunk_matmul + self.attention

    @property
    def nextlat_part(self) -> float:
        """What NextLat adds: ψ and the frozen-head KL over the rollout."""
        return self.psi + self.kl_head

    def ratio_to(self, baseline: FlopsBreakdown) -> float:
        """total / baseline.total, e.g. NextLat(d) against NTP on the same trunk."""
        return self.total / baseline.total

    def per_step(self, tokens: int) -> float:
        """FLOPs of one optimizer step that trains on `tokens` tokens (batch × T)."""
        return self.total * tokens


def _check_spec(spec: ModelSpec) -> None:
    if spec.hidden_size % spec.num_heads:
        raise ValueError(f"hidden_size={spec.hidden_size} not divisible by "
                         f"num_heads={spec.num_heads}")
    if spec.num_query_groups < 1 or spec.num_heads % spec.num_query_groups:
        raise ValueError(f"num_query_groups={spec.num_query_groups} must divide "
                         f"num_heads={spec.num_heads}")


def padded_vocab(spec: ModelSpec) -> int:
    """The vocabulary the embedding and the LM head are built (and computed) with."""
    return padded_vocab_size(spec.vocab_size, spec.make_vocab_size_divisible_by, spec.tp)


def _block_matmul_parameters(spec: ModelSpec) -> tuple[int, int]:
    """(attention, MLP) matmul weights of one transformer layer."""
    d, f = spec.hidden_size, spec.ffn_hidden_size
    kv = 2 * spec.num_query_groups * (d // spec.num_heads)
    attention = d * (d + kv) + d * d  # fused QKV (GQA) + output projection
    mlp = d * 2 * f + f * d  # SwiGLU: fc1 D -> 2F (gate and up), fc2 F -> D
    return attention, mlp


def trunk_matmul_parameters(spec: ModelSpec) -> int:
    """Weights that take part in a matmul per token: every layer's linears and the LM head.

    The LM head counts V·D even when tied to the embedding (shared weight, separate matmul);
    the embedding lookup itself is not a matmul.
    """
    _check_spec(spec)
    attention, mlp = _block_matmul_parameters(spec)
    return spec.num_layers * (attention + mlp) + padded_vocab(spec) * spec.hidden_size


def psi_matmul_parameters(spec: ModelSpec) -> int:
    """ψ's three matrices: 2D·H + H·H + H·D (0 without ψ)."""
    d, h = spec.hidden_size, spec.psi_width
    return 2 * d * h + h * h + h * d


def muon_matrix_parameters(spec: ModelSpec) -> int:
    """The parameters `train.optimizer=muon` updates with Muon (`train/muon.split_parameters`):
    the hidden matrices of every decoder layer and extra MTP head, ψ's three and Fetch's
    q/k/v and output projections; everything else (embeddings, LM head, norms, Fetch's slot
    offsets) is AdamW's."""
    attention, mlp = _block_matmul_parameters(spec)
    layers = spec.num_layers + spec.mtp_heads - 1
    fetch = 4 * spec.hidden_size * spec.hidden_size if spec.jtp_steps else 0
    return layers * (attention + mlp) + psi_matmul_parameters(spec) + fetch


def parameter_counts(spec: ModelSpec) -> dict[str, int]:
    """Analytic parameter counts of `NextLatGPT(spec)`, whole model (all TP shards).

    Keys: `embedding` (V·D), `head` (V·D, 0 when tied: it is the embedding),
    `blocks` (the L layers and the final norm), `trunk` (everything but ψ and the extra MTP
    heads: embedding + blocks + head), `psi` (2D norm + 2D·H + H·H + H·D, 0 without ψ),
    `mtp_heads` (n_h − 1 layers), `jtp_fetch` (JTP's Fetch, `jtp_fetch.fetch_parameter_count`),
    `total`. At TP=1 `trunk`, `psi`, `mtp_heads`, `jtp_fetch` and `total` equal
    `nextlat_pt.model.gpt.count_parameters(NextLatGPT(spec))`.
    """
    _check_spec(spec)
    d = spec.hidden_size
    vocab = padded_vocab(spec)
    attention, mlp = _block_matmul_parameters(spec)
    norms = 2 * d  # input_layernorm + pre_mlp_layernorm (RMSNorm: a gain, no bias)
    blocks = spec.num_layers * (attention + mlp + norms) + d  # + final_layernorm
    embedding = vocab * d
    head = 0 if spec.tie_embeddings else vocab * d
    psi = 2 * d + psi_matmul_parameters(spec) if spec.psi_width > 0 else 0
    mtp_heads = (spec.mtp_heads - 1) * (attention + mlp + norms)
    fetch = fetch_parameter_count(d, spec.jtp_steps) if spec.jtp_steps else 0
    trunk = embedding + blocks + head
    return {
        "embedding": embedding,
        "head": head,
        "blocks": blocks,
        "trunk": trunk,
        "psi": psi,
        "mtp_heads": mtp_heads,
        "jtp_fetch": fetch,
        "total": trunk + psi + mtp_heads + fetch,
    }


def rollout_coverage(seq_len: int, horizon: int) -> float:
    """Σ_{i=1..d} (T − i)/T = d − d(d+1)/(2T): rollout positions per token of the sequence."""
    if not 0 <= horizon < seq_len:
        raise ValueError(f"horizon={horizon} must lie in [0, seq_len={seq_len})")
    return sum(seq_len - i for i in range(1, horizon + 1)) / seq_len


def attention_flops_per_token(spec: ModelSpec, seq_len: int, causal: bool = True) -> float:
    """Scores + values, forward + backward: 6·L·D·(T+1) causal, 12·L·D·T full."""
    keys_per_query = (seq_len + 1) / 2 if causal else seq_len
    forward = 2 * 2 * spec.hidden_size * keys_per_query  # QKᵀ and AV, all heads
    return 3 * forward * spec.num_layers


def flops_per_token(spec: ModelSpec, seq_len: int, horizon: int, nextlat: bool,
                    with_kl: bool = True) -> FlopsBreakdown:
    """Training FLOPs per token for NTP (`nextlat=False`) or NextLat with horizon d; the
    spec's extra MTP heads (`mtp_heads` > 1) and JTP's Fetch (`jtp_steps` > 0) are counted
    in either case.

    For NextLat the spec must have ψ (`psi_width > 0`); `with_kl=False` is λ_KL = 0 (the KL
    rollout is skipped). For NTP `horizon` is ignored.
    """
    _check_spec(spec)
    trunk = 6.0 * trunk_matmul_parameters(spec)
    attention = attention_flops_per_token(spec, seq_len, causal=True)
    mtp = (spec.mtp_heads - 1) * (
        6.0 * (sum(_block_matmul_parameters(spec)) + padded_vocab(spec) * spec.hidden_size)
        + attention / spec.num_layers)
    fetch = jtp_fetch_flops_per_token(spec)
    if not nextlat:
        return FlopsBreakdown(trunk_matmul=trunk, attention=attention, mtp_heads=mtp,
                              jtp_fetch=fetch)
    if spec.psi_width <= 0:
        raise ValueError("NextLat FLOPs need ψ: the spec has psi_width=0")
    if horizon < 1:
        raise ValueError(f"NextLat needs horizon >= 1 (got {horizon})")
    coverage = rollout_coverage(seq_len, horizon)
    embedding_half = spec.hidden_size * spec.psi_width  # W1_e, applied once per sequence
    psi = (6.0 * (psi_matmul_parameters(spec) - embedding_half) * coverage
           + 6.0 * embedding_half * (seq_len - 1) / seq_len)
    kl = 4.0 * spec.hidden_size * padded_vocab(spec) * coverage if with_kl else 0.0
    return FlopsBreakdown(trunk_matmul=trunk, attention=attention, psi=psi, kl_head=kl)


def jtp_fetch_flops_per_token(spec: ModelSpec) -> float:
    """JTP's Fetch per token, forward + backward (module doc); 0 without JTP."""
    steps, d = spec.jtp_steps, spec.hidden_size
    if steps <= 0:
        return 0.0
    projections = 6.0 * 4 * d * d * (steps + 1)
    slot_attention = 6.0 * d * (steps + 1) * (steps + 2)  # 3 · Σ_j 4·D·(j + 1)
    return projections + slot_attention + 6.0 * padded_vocab(spec) * d * steps


def nextlat_to_ntp_ratio(spec: ModelSpec, seq_len: int, horizon: int,
                         with_kl: bool = True) -> float:
    """Predicted cost of a NextLat(d) step relative to an NTP step on the same trunk."""
    ntp = flops_per_token(spec, seq_len, 0, nextlat=False)
    return flops_per_token(spec, seq_len, horizon, nextlat=True, with_kl=with_kl).ratio_to(ntp)


# Dense bf16 tensor-core peaks per device (vendor datasheets, without sparsity), matched in
# order as substrings of torch.cuda.get_device_name(): the first match wins. MFU is measured
# against them (the trainer's progress line, bench/gpu/check_gpu.py).
PEAK_BF16_TFLOPS = [
    ("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
    ("H100", 989.4), ("H800", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0),
]


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s: the override, else the table, else None."""
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None

