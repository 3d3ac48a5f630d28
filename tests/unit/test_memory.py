"""The start-up memory estimate: its parts scale the way the layout says they should (the
estimate against measured peaks: tests/integration/test_memory_estimate_vs_peak.py)."""

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


def test_zero_stages_shard_what_they_promise():
    z1 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=1, bf16=True, grad_accum_dtype="bf16")
    z2 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=2, bf16=True, grad_accum_dtype="bf16")
    z3 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=3, bf16=True, grad_accum_dtype="bf16")
    one = estimate_memory(SPEC, 1024, 1, dp=1, zero_stage=1, bf16=True, grad_accum_dtype="bf16")
    assert z1.optimizer == pytest.approx(one.optimizer / 8) and z1.gradients == one.gradients
    assert z2.gradients == pytest.approx(one.gradients / 8) and z2.weights == one.weights
    assert z3.weights == pytest.approx(one.weights / 8)


def test_bf16_fp32_gradient_accumulation_adds_the_fp32_buffers():
    """bf16 gradients (2 bytes) plus the fp32 buffers they accumulate in (4 bytes): whole
    under ZeRO-1 (DeepSpeed's bf16 optimizer), sharded by dp under ZeRO-2."""
    lossy = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=1, bf16=True, grad_accum_dtype="bf16")
    z1 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=1, bf16=True)
    z2 = estimate_memory(SPEC, 1024, 1, dp=8, zero_stage=2, bf16=True)
    params = lossy.weights / 2
    assert z1.gradients == pytest.approx(6 * params)
    assert z2.gradients == pytest.approx(2 * params + 4 * params / 8)
    assert z1.optimizer == lossy.optimizer


def test_tensor_parallelism_shards_the_weights():
    """Measured peaks (one process) are pinned in tests/integration/
    test_memory_estimate_vs_peak.py; TP needs two ranks, so its split is checked here."""
    base = estimate_memory(SPEC, 1024, 4, dp=1, zero_stage=1)
    tp2 = estimate_memory(dataclasses.replace(SPEC, tp=2), 1024, 4, dp=1, zero_stage=1)
    assert tp2.weights == pytest.approx(base.weights / 2, rel=1e-3)  # vocab padded for TP
    assert tp2.activations < base.activations
    assert "GiB" in base.describe()


def test_mtp_heads_recomputed_keep_one_heads_logits_alive():
    """Recomputing the extra heads in backward keeps one head's logits and layer alive,
    whatever n; without it every extra head's are."""
    ntp = dataclasses.replace(SPEC, psi_width=0)
    base = estimate_memory(ntp, 1024, 4, dp=1, zero_stage=1)
    per_head = 1024 * 4 * 50304 * 4  # s·b·V·w, fp32
    for heads in (2, 4):
        mtp = dataclasses.replace(ntp, mtp_heads=heads)
        one_at_a_time = estimate_memory(mtp, 1024, 4, dp=1, zero_stage=1)
        all_kept = estimate_memory(mtp, 1024, 4, dp=1, zero_stage=1, mtp_recompute_heads=False)
        assert one_at_a_time.logits == pytest.approx(base.logits + per_head)
        assert all_kept.logits == pytest.approx(base.logits + (heads - 1) * per_head)
        assert one_at_a_time.weights > base.weights  # n − 1 more layers
