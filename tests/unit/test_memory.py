"""The start-up memory estimate: its parts scale the way the layout says they should."""

from __future__ import annotations

import dataclasses

import pytest

from nextlat_pt.memory import estimate_memory
from nextlat_pt.model.gpt import ModelSpec

SPEC = ModelSpec(num_layers=22, hidden_size=2048, num_heads=16, num_query_groups=16,
                 ffn_hidden_size=5504, vocab_size=50257, max_position_embeddings=1024,
                 psi_width=6528)


def test_one_rank_fp32_adamw_is_16_bytes_per_parameter_plus_activations():
    """One fp32 rank trains without DeepSpeed: weights, grads, two moments (16 bytes); under
    DeepSpeed its fp32 partition adds 4 (20 bytes); bf16 keeps fp32 master weights."""
    est = estimate_memory(SPEC, 1024, 1, dp=1, zero_stage=1)
    params = est.weights / 4
    assert params == pytest.approx(1.402e9, rel=0.01)  # 1.32B trunk + 82.7M ψ
    assert est.gradients == est.weights and est.optimizer == pytest.approx(2 * est.weights)
    assert est.activations > 0 and est.logits > 0
    pipelined = estimate_memory(dataclasses.replace(SPEC, pp=2), 1024, 1, dp=1, zero_stage=1)
    assert pipelined.optimizer == pytest.approx(3 * pipelined.weights)  # DeepSpeed (PP > 1)
    bf16 = estimate_memory(SPEC, 1024, 1, dp=1, zero_stage=1, bf16=True)
    assert bf16.optimizer == pytest.approx(12 * params)  # moments + fp32 master weights


def test_nextlat_terms_kl_bounded_by_the_chunk_psi_linear_in_d():
    ntp = estimate_memory(SPEC, 1024, 4, dp=1, zero_stage=1)
    d1, d2, d4 = (estimate_memory(SPEC, 1024, 4, dp=1, zero_stage=1, horizon=d)
                  for d in (1, 2, 4))
    vocab = 50304
    # NextLat keeps the logits (the teacher) beside the CE's gradient (the next-token CE
    # writes it over them), plus the KL's working set: three fp32 chunk × V buffers,
    # whatever d
    kept_logits = 4096 * vocab * 4
    assert d1.logits - ntp.logits == d4.logits - ntp.logits == \
        kept_logits + 3 * 1024 * vocab * 4
    psi_step = 4096 * (8 * 2048 + 4 * 6528) * 4
    assert d2.activations - d1.activations == pytest.approx(psi_step)
    assert d4.activations - d1.activations == pytest.approx(3 * psi_step)
    small_chunk = estimate_memory(SPEC, 1024, 4, dp=1, zero_stage=1, horizon=1,
                                  kl_chunk_tokens=128)
    assert small_chunk.logits - ntp.logits == kept_logits + 3 * 128 * vocab * 4


def test_zero_stages_shard_what_they_promise():
    z1 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=1, bf16=True)
    z2 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=2, bf16=True)
    z3 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=3, bf16=True)
    one = estimate_memory(SPEC, 1024, 1, dp=1, zero_stage=1, bf16=True)
    assert z1.optimizer == pytest.approx(one.optimizer / 8) and z1.gradients == one.gradients
    assert z2.gradients == pytest.approx(one.gradients / 8) and z2.weights == one.weights
    assert z3.weights == pytest.approx(one.weights / 8)


def test_tensor_parallelism_and_recompute_cut_activations():
    base = estimate_memory(SPEC, 1024, 4, dp=1, zero_stage=1)
    tp2 = estimate_memory(dataclasses.replace(SPEC, tp=2), 1024, 4, dp=1, zero_stage=1)
    rc = estimate_memory(dataclasses.replace(SPEC, recompute=True), 1024, 4, dp=1,
                         zero_stage=1)
    # TP shards attention and MLP activations; the norms' stay replicated (no SP)
    h, f = 2048, 5504
    per_token = {1: 4 * h + 5 * h + 4 * f, 2: 4 * h + (5 * h + 4 * f) / 2}
    assert tp2.activations == pytest.approx(base.activations * per_token[2] / per_token[1])
    assert tp2.weights == pytest.approx(base.weights / 2, rel=1e-3)  # vocab padded for TP
    assert rc.activations < base.activations / 5
    assert "GiB" in base.describe()
