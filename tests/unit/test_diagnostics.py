"""Latent diagnostics: effective rank on matrices with known spectra, linear probes on data
whose answer is known, and hidden-state collection from a Hugging Face model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nextlat_pt.eval.diagnostics import (
    collect_hidden_states,
    effective_rank,
    fit_linear_probe,
    forward_windows,
    split_groups,
    token_offset_probes,
)


def _with_spectrum(singular_values: list[float], rows: int = 40, cols: int = 12,
                   seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthonormal U [rows, r], V [cols, r] (float64)."""
    g = torch.Generator().manual_seed(seed)
    r = len(singular_values)
    u = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, r, generator=g, dtype=torch.float64))[0]
    return u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T


# ------------------------------------------------------------------ effective rank


@pytest.mark.parametrize("r", [1, 3, 7])
def test_equal_singular_values_give_exactly_their_count(r):
    assert effective_rank(_with_spectrum([2.5] * r)) == pytest.approx(r, abs=1e-9)


def test_identity_has_full_rank_and_scale_does_not_matter():
    assert effective_rank(torch.eye(16)) == pytest.approx(16, abs=1e-9)
    assert effective_rank(1e-6 * torch.eye(16)) == pytest.approx(16, abs=1e-9)


def test_known_spectrum_gives_the_closed_form_value():
    sigma = [3.0, 2.0, 1.0]
    p = [s / 6.0 for s in sigma]
    expected = math.exp(-sum(q * math.log(q) for q in p))  # = 2.7495...
    assert effective_rank(_with_spectrum(sigma)) == pytest.approx(expected, rel=1e-10)
    # [B, T, D] is read as B·T rows of D.
    batched = _with_spectrum(sigma, rows=40).reshape(4, 10, 12)
    assert effective_rank(batched) == pytest.approx(expected, rel=1e-10)


def test_normalised_singular_values_below_1e_12_are_dropped():
    assert effective_rank(_with_spectrum([1.0, 1e-13])) == 1.0  # cut: exactly one direction
    kept = effective_rank(_with_spectrum([1.0, 1e-10]))  # kept: p log p ≈ 2.3e-9
    assert 1.0 + 1e-9 < kept < 1.0 + 1e-8
    # Numerical zeros of a rank-deficient float32 matrix never count.
    low_rank = torch.randn(200, 3) @ torch.randn(3, 32)
    assert effective_rank(low_rank) < 3.0 + 1e-6


def test_hidden_states_are_not_centred():
    # Every row the same vector: one direction uncentred (centring would leave nothing).
    assert effective_rank(torch.randn(1, 8).expand(50, 8)) == pytest.approx(1.0, abs=1e-12)
    assert effective_rank(torch.zeros(5, 4)) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(torch.tensor([[1.0, float("nan")]]))


# ------------------------------------------------------------------ probes


def test_probe_reads_a_linearly_encoded_target():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (2000,), generator=g)
    codes = torch.randn(10, 16, generator=g)
    features = codes[targets] + 0.1 * torch.randn(2000, 16, generator=g)
    result = fit_linear_probe(features, targets, 10, steps=150)
    assert result.accuracy > 0.98 and result.train_accuracy > 0.98
    assert result.test_size == 400 and result.train_size == 1600 and result.num_classes == 10
    assert result.unseen_fraction == 0.0


def test_probe_on_random_features_is_at_chance():
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 4, (4000,), generator=g)
    result = fit_linear_probe(torch.randn(4000, 16, generator=g), targets, 4, steps=150)
    assert abs(result.accuracy - 0.25) < 0.05
    assert abs(result.majority_accuracy - 0.25) < 0.05


def test_probe_is_deterministic_given_the_seed():
    g = torch.Generator().manual_seed(2)
    features, targets = torch.randn(600, 8, generator=g), torch.randint(0, 5, (600,), generator=g)
    first = fit_linear_probe(features, targets, 5, steps=30, batch_size=64, seed=3)
    assert first == fit_linear_probe(features, targets, 5, steps=30, batch_size=64, seed=3)


def test_split_keeps_each_group_on_one_side():
    groups = torch.arange(20).repeat_interleave(7)
    train = split_groups(groups, 0.8, seed=0)
    assert set(groups[train].tolist()).isdisjoint(groups[~train].tolist())
    assert len(set(groups[train].tolist())) == 16 and int(train.sum()) == 16 * 7
    with pytest.raises(ValueError, match="at least 2 groups"):
        split_groups(torch.zeros(5), 0.8, seed=0)


def test_grouped_split_does_not_leak_a_sequence_into_both_sides():
    """Each sequence has its own class and a feature fingerprint: split by row, the probe
    memorises it; split by sequence, every held-out class is unseen and counted wrong."""
    g = torch.Generator().manual_seed(4)
    sequences, length = 50, 20
    groups = torch.arange(sequences).repeat_interleave(length)
    fingerprint = torch.randn(sequences, 32, generator=g)
    features = fingerprint[groups] + 0.1 * torch.randn(len(groups), 32, generator=g)
    by_row = fit_linear_probe(features, groups, sequences, steps=150)
    by_sequence = fit_linear_probe(features, groups, sequences, groups=groups, steps=150)
    assert by_row.accuracy > 0.95
    assert by_sequence.accuracy == 0.0 and by_sequence.unseen_fraction == 1.0
    assert math.isnan(by_sequence.ce)  # no held-out row has a class the probe knows


def test_token_offset_probes_align_h_t_with_x_t_plus_k():
    """h_t encodes x_{t+2} (exactly) and nothing else: offset 2 is read perfectly, offset 1
    is at chance."""
    g = torch.Generator().manual_seed(5)
    batch, length, vocab = 60, 24, 6
    tokens = torch.randint(0, vocab, (batch, length + 3), generator=g)
    codes = torch.randn(vocab, 12, generator=g)
    hidden = codes[tokens[:, 2 : length + 2]]  # h_t = code(x_{t+2}), t < length
    results = token_offset_probes(hidden, tokens, range(1, 4), steps=150)
    assert [r.offset for r in results] == [1, 2, 3]
    assert results[1].accuracy > 0.99
    assert results[0].accuracy < 0.35 and results[2].accuracy < 0.35
    # Rows: positions t with t+k inside the window (capped at the hidden length).
    assert [r.train_size + r.test_size for r in results] == [batch * length] * 3
    assert results[0].test_size == 12 * length  # 12 of 60 sequences held out
    with pytest.raises(ValueError, match="offset 27"):
        token_offset_probes(hidden, tokens, [27])


# ------------------------------------------------------------------ hidden states


def test_collected_hidden_states_are_the_hf_models_head_input(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from nextlat_pt.eval.models import HFModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    model = HFModel(tmp_path)
    windows = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(0))
    hidden = collect_hidden_states(model, windows[:, :8], batch_size=2)  # uneven chunks
    with torch.no_grad():
        reference = model.model.model(input_ids=windows[:, :8]).last_hidden_state
        logits = model.model.lm_head(hidden)
    assert hidden.shape == (5, 8, 16)
    torch.testing.assert_close(hidden, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, model.logits(windows[:, :8]), rtol=1e-5, atol=1e-5)

    scored = forward_windows(model, windows, 8, batch_size=3)
    torch.testing.assert_close(scored.hidden, hidden)
    ce = F.cross_entropy(logits.reshape(-1, 50), windows[:, 1:].reshape(-1))
    assert scored.ce == pytest.approx(float(ce), rel=1e-5) and scored.positions == 40
    accuracy = (logits.argmax(-1) == windows[:, 1:]).float().mean()
    assert scored.accuracy == pytest.approx(float(accuracy))
