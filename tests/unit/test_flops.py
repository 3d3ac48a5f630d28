"""nextlat_pt.flops against the real model: parameter counts, and FLOPs counted by PyTorch.

The FLOP checks run a small NextLatGPT forward + backward (NTP, NextLat d=1, d=2) under
torch.utils.flop_counter.FlopCounterMode, which counts every matmul the autograd graph
executes, and compare with the analytic breakdown × tokens. With the SDPA backend the CPU
attention kernel is not counted by FlopCounterMode, so those runs see exactly the matmul
terms (trunk, ψ, frozen-head KL); megatron's `local` backend computes attention as bmm over
the full T×T square, which checks the attention term (non-causal form).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nextlat_pt.flops import (
    FlopsBreakdown,
    attention_flops_per_token,
    flops_per_token,
    nextlat_to_ntp_ratio,
    padded_vocab,
    parameter_counts,
    psi_matmul_parameters,
    rollout_coverage,
    trunk_matmul_parameters,
)
from nextlat_pt.model.gpt import ModelSpec, NextLatGPT, count_parameters
from nextlat_pt.model.nextlat_loss import NextLatLossConfig, next_token_loss, nextlat_loss
from nextlat_pt.train.step import MicroBatch


def small_spec(**kw) -> ModelSpec:
    base = dict(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=4,
                ffn_hidden_size=128, vocab_size=100, max_position_embeddings=16,
                attention_backend="sdpa")
    base.update(kw)
    return ModelSpec(**base)


SPECS = {
    "mha-untied-psi": small_spec(psi_width=128),
    "gqa-untied-psi": small_spec(num_query_groups=2, psi_width=256),
    "gqa-tied-psi": small_spec(num_query_groups=1, tie_embeddings=True, psi_width=128),
    "mha-tied-ntp": small_spec(tie_embeddings=True, psi_width=0),
    # vocab 300 pads to 384, odd ψ width, 3 layers, 8 heads in 2 groups
    "gqa-untied-padded": small_spec(num_layers=3, num_heads=8, num_query_groups=2,
                                    vocab_size=300, ffn_hidden_size=96, psi_width=96),
    "gqa-untied-mtp3": small_spec(num_query_groups=2, mtp_heads=3),
    "gqa-untied-jtp2": small_spec(num_query_groups=2, jtp_steps=2),
}

# The paper's 1.3B setting (docs/method.md §2 and §8).
PAPER_1B3 = ModelSpec(num_layers=22, hidden_size=2048, num_heads=16, num_query_groups=16,
                      ffn_hidden_size=128 * round(8 * 2048 / 3 / 128), vocab_size=50257,
                      max_position_embeddings=1024, psi_width=6528)


def _batch(spec: ModelSpec, batch: int, seq_len: int) -> MicroBatch:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.vocab_size, (batch, seq_len + 1), generator=gen)
    return MicroBatch.from_sample({"tokens": tokens, "doc_ids": torch.zeros_like(tokens)},
                                  torch.device("cpu"))


def _loss(model: NextLatGPT, batch: MicroBatch, horizon: int) -> torch.Tensor:
    """Forward and the objective: NTP (horizon 0) or NextLat(horizon), as the trainer's."""
    output = model(batch.input_ids)
    if horizon == 0:
        return next_token_loss(output.logits, batch.labels, batch.loss_mask)
    return nextlat_loss(
        hidden=output.hidden, logits=output.logits, labels=batch.labels,
        input_embeddings=output.input_embeddings, head_weight=model.head_weight(),
        psi=model.psi, loss_mask=batch.loss_mask, doc_ids=batch.doc_ids,
        cfg=NextLatLossConfig(horizon=horizon),
    ).total


def _counted_flops(model: NextLatGPT, batch: MicroBatch, horizon: int) -> dict[str, int]:
    """FLOPs per aten op of one forward + backward (loss of NTP or NextLat(horizon))."""
    with FlopCounterMode(display=False) as counter:
        _loss(model, batch, horizon).backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("name", list(SPECS))
def test_parameter_counts_match_the_model(parallel_tp1, name):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = NextLatGPT(spec)
    counted = count_parameters(model)
    analytic = parameter_counts(spec)
    assert {k: analytic[k] for k in counted} == counted
    params = dict(model.named_parameters())
    assert analytic["embedding"] == params["gpt.embedding.word_embeddings.weight"].numel()
    if spec.tie_embeddings:
        assert analytic["head"] == 0 and "gpt.output_layer.weight" not in params
    else:
        assert analytic["head"] == params["gpt.output_layer.weight"].numel()
    psi = sum(p.numel() for n, p in params.items() if n.startswith("psi."))
    assert analytic["psi"] == psi and (psi > 0) == (spec.psi_width > 0)


@pytest.mark.parametrize("name", ["mha-untied-psi", "gqa-tied-psi", "gqa-untied-padded"])
def test_trunk_matmul_flops_are_six_times_matmul_params(parallel_tp1, name):
    spec = SPECS[name]
    model = NextLatGPT(spec)
    # every ≥2-D weight of the trunk except the embedding table is a linear layer's; the LM
    # head is a matmul even when its weight is the (tied) embedding
    linear = sum(p.numel() for n, p in model.gpt.named_parameters()
                 if p.ndim >= 2 and "word_embeddings" not in n and "output_layer" not in n)
    matmul_params = linear + model.head_weight().numel()
    assert trunk_matmul_parameters(spec) == matmul_params
    flops = flops_per_token(spec, seq_len=16, horizon=1, nextlat=spec.psi_width > 0)
    assert flops.trunk_matmul == 6 * matmul_params


@pytest.mark.parametrize("name", ["mha-untied-psi", "gqa-tied-psi", "gqa-untied-padded"])
def test_matmul_flops_equal_pytorch_count(parallel_tp1, name):
    """trunk + ψ + KL, with the exact T − i rollout coverage, equal FlopCounterMode's mm."""
    spec = SPECS[name]
    batch, seq_len = 2, 16
    torch.manual_seed(0)
    model = NextLatGPT(spec)
    data = _batch(spec, batch, seq_len)
    tokens = batch * seq_len
    for horizon in (0, 1, 2):
        counted = _counted_flops(model, data, horizon)
        assert set(counted) == {"aten.mm"}  # SDPA on CPU: attention is not counted
        analytic = flops_per_token(spec, seq_len, horizon, nextlat=horizon > 0)
        expected = (analytic.trunk_matmul + analytic.psi + analytic.kl_head) * tokens
        assert counted["aten.mm"] == pytest.approx(expected, rel=1e-12), horizon
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("recompute_heads", [False, True])
def test_mtp_matmul_flops_equal_pytorch_count(parallel_tp1, recompute_heads):
    """The extra heads' layers and LM-head products, all T positions each; recomputing the
    heads in backward runs their forward (a third of the term) once more."""
    from nextlat_pt.model.mtp_loss import MTPLossConfig
    from nextlat_pt.train.train_module import NextLatTrainModule

    spec = SPECS["gqa-untied-mtp3"]
    batch, seq_len = 2, 16
    torch.manual_seed(0)
    module = NextLatTrainModule(NextLatGPT(spec), MTPLossConfig(3, recompute_heads))
    data = _batch(spec, batch, seq_len)
    with FlopCounterMode(display=False) as counter:
        module(data.input_ids, data.labels, data.loss_mask, data.doc_ids)[0].backward()
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    analytic = flops_per_token(spec, seq_len, 0, nextlat=False)
    heads_matmul = analytic.mtp_heads - 2 * analytic.attention / spec.num_layers
    expected = analytic.trunk_matmul + heads_matmul * (4 / 3 if recompute_heads else 1)
    assert counted["aten.mm"] == pytest.approx(expected * batch * seq_len, rel=1e-12)


@pytest.mark.parametrize("recompute", [False, True])
def test_jtp_matmul_flops_equal_pytorch_count(parallel_tp1, recompute):
    """Fetch's projections on d + 1 slots and one LM-head product per step at all T
    positions (the slots' attention is SDPA: not counted on CPU); recomputing each step's
    logits runs its head product's forward (a third of it) once more."""
    from nextlat_pt.flops import jtp_fetch_flops_per_token
    from nextlat_pt.model.jtp_loss import JTPLossConfig
    from nextlat_pt.train.train_module import NextLatTrainModule

    spec = SPECS["gqa-untied-jtp2"]
    batch, seq_len, d = 2, 16, spec.hidden_size
    torch.manual_seed(0)
    module = NextLatTrainModule(NextLatGPT(spec), JTPLossConfig(2, recompute=recompute))
    data = _batch(spec, batch, seq_len)
    with FlopCounterMode(display=False) as counter:
        module(data.input_ids, data.labels, data.loss_mask, data.doc_ids)[0].backward()
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    analytic = flops_per_token(spec, seq_len, 0, nextlat=False)
    assert analytic.jtp_fetch == jtp_fetch_flops_per_token(spec) > 0
    slot_attention = 6.0 * d * 3 * 4
    heads = 6.0 * padded_vocab(spec) * d * 2
    expected = (analytic.trunk_matmul + analytic.jtp_fetch - slot_attention
                + (heads / 3 if recompute else 0))
    assert counted["aten.mm"] == pytest.approx(expected * batch * seq_len, rel=1e-12)


def test_attention_flops_equal_pytorch_count_local_backend(parallel_tp1):
    spec = small_spec(num_query_groups=2, attention_backend="local")
    batch, seq_len = 2, 16
    model = NextLatGPT(spec)
    counted = _counted_flops(model, _batch(spec, batch, seq_len), horizon=0)
    attention = counted["aten.baddbmm"] + counted["aten.bmm"]  # scores (+ mask), values
    full = attention_flops_per_token(spec, seq_len, causal=False)
    assert attention == full * batch * seq_len == 12 * 2 * 64 * seq_len * batch * seq_len
    causal = flops_per_token(spec, seq_len, 0, nextlat=False).attention
    assert causal == 6 * 2 * 64 * (seq_len + 1)  # the causal count: half, plus the diagonal
    assert causal == pytest.approx(full * (seq_len + 1) / (2 * seq_len))


def test_rollout_coverage_counts_t_minus_i_positions():
    assert rollout_coverage(10, 0) == 0
    assert rollout_coverage(10, 1) == pytest.approx(0.9)
    assert rollout_coverage(10, 3) == pytest.approx((9 + 8 + 7) / 10)
    with pytest.raises(ValueError):
        rollout_coverage(10, 10)


def test_ratio_grows_with_horizon():
    spec = SPECS["gqa-untied-psi"]
    ratios = [nextlat_to_ntp_ratio(spec, 16, d) for d in (1, 2, 4, 8)]
    assert all(r > 1 for r in ratios)
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)
    # each step adds the same ψ + KL work times its shrinking coverage (T − i)/T, except ψ's
    # E(x) half of the first layer (D·H), computed once for the T − 1 next tokens
    ntp = flops_per_token(spec, 16, 0, nextlat=False)
    step = 6 * psi_matmul_parameters(spec) + 4 * 64 * 128
    embedding_half = 6 * 64 * spec.psi_width
    assert ratios[0] == pytest.approx(1 + step * 15 / 16 / ntp.total)
    assert ratios[1] - ratios[0] == pytest.approx((step - embedding_half) * 14 / 16 / ntp.total)
    no_kl = nextlat_to_ntp_ratio(spec, 16, 2, with_kl=False)
    assert 1 < no_kl < ratios[1]
    with pytest.raises(ValueError):
        flops_per_token(SPECS["mha-tied-ntp"], 16, 1, nextlat=True)


def test_breakdown_total_and_ratio():
    a = FlopsBreakdown(trunk_matmul=10.0, attention=2.0, psi=3.0, kl_head=1.0)
    b = FlopsBreakdown(trunk_matmul=10.0, attention=2.0)
    assert a.total == 16.0 and b.total == 12.0
    assert a.ratio_to(b) == pytest.approx(16 / 12)
    assert a.nextlat_part == 4.0 and a.ntp_part == 12.0 and a.per_step(3) == 48.0


def test_paper_1b3_setting():
    """The paper's 1.3B numbers (docs/method.md §2): ψ ≈ 82.7M, trunk ≈ 1.32B, NextLat
    1.40B training params.

    What we get (V = 50257 padded to 50304, F = 5504, H = 6528, untied):
      ψ 82,726,912 = 4,096 (norm) + 26,738,688 (2D·H) + 42,614,784 (H²) + 13,369,344 (H·D)
      trunk 1,319,200,768 = 2 × 103,022,592 (embedding, head) + 22 × 50,597,888 + 2,048
      total 1,401,927,680.
    FLOPs per token (T = 1024): trunk matmuls 7.297 G, attention 0.277 G; per rollout step
    ψ 0.496 G and the frozen-head KL 0.412 G (the §9 estimate: ≈ 0.5 G and ≈ 0.4 G), i.e.
    ≈ 12 % of NTP per step; ψ's E(x) half of W1 (0.16 G) is paid once, not per step:
    NextLat/NTP = 1.120 (d=1), 1.229 (d=2), 1.882 (d=8). The paper measured 1.00 / 1.11 /
    1.79 (3.09 / 2.79 / 1.73 it/s on a B200).
    """
    counts = parameter_counts(PAPER_1B3)
    assert PAPER_1B3.ffn_hidden_size == 5504
    assert counts["psi"] == 82_726_912
    assert counts["trunk"] == 1_319_200_768
    assert counts["embedding"] == counts["head"] == 50304 * 2048
    assert counts["total"] == pytest.approx(1.40e9, rel=0.005)
    assert counts["psi"] / counts["trunk"] == pytest.approx(0.063, abs=0.001)  # "+6%"

    flops = flops_per_token(PAPER_1B3, 1024, 1, nextlat=True)
    assert flops.trunk_matmul == pytest.approx(7.2965e9, rel=1e-4)
    assert flops.attention == 6 * 22 * 2048 * 1025
    per_step = 1023 / 1024
    assert flops.psi / per_step == pytest.approx(0.496e9, rel=1e-3)
    assert flops.kl_head / per_step == 4 * 2048 * 50304
    ratios = [nextlat_to_ntp_ratio(PAPER_1B3, 1024, d) for d in (1, 2, 8)]
    assert ratios == pytest.approx([1.120, 1.229, 1.882], abs=1e-3)
