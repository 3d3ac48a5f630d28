"""train.optimizer=muon: which parameters Muon trains, its step against torch.optim.Muon and a
float64 reference, Muon's own rate, and the layouts and values the config refuses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nextlat_pt.config import ConfigError, load_config, resolved_grad_accum_dtype, validate
from nextlat_pt.parallel.deepspeed_engine import set_lr
from nextlat_pt.train.muon import NS_COEFFICIENTS, MuonAdamW, split_parameters
from nextlat_pt.train.optim import build_optimizer


def _model(*overrides: str) -> torch.nn.Module:
    from nextlat_pt.train.build import build_model_chunks, loss_config, model_spec
    from nextlat_pt.train.train_module import NextLatTrainModule

    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
                             "model.seq_len=16", "nextlat.horizon=1", *overrides])
    chunk = build_model_chunks(model_spec(cfg, 256), torch.device("cpu"))[0]
    return NextLatTrainModule(chunk, loss_config(cfg))


@pytest.mark.parametrize("tied", [False, True])
def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(parallel_tp1, tied):
    model = _model(f"model.tie_embeddings={str(tied).lower()}")
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adamw = split_parameters(model)
    muon_names = {names[id(p)] for p in muon}
    adamw_names = {names[id(p)] for p in adamw}
    assert muon_names.isdisjoint(adamw_names)
    assert muon_names | adamw_names == set(names.values())
    expected = {n for n in names.values() if n.endswith((
        "linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight"))}
    expected |= {f"model.psi.fc{i}.weight" for i in (1, 2, 3)}  # ψ's hidden matrices
    assert len(expected) == 4 * 2 + 3
    assert muon_names == expected
    assert "model.gpt.embedding.word_embeddings.weight" in adamw_names
    assert ("model.gpt.output_layer.weight" in adamw_names) != tied  # the LM head
    assert all(p.ndim == 1 for n, p in model.named_parameters()
               if n in adamw_names and "embedding" not in n and "output_layer" not in n)


def test_jtp_fetch_projections_take_muon_and_its_slot_offsets_adamw(parallel_tp1):
    model = _model("nextlat.objective=jtp")
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adamw = split_parameters(model)
    fetch_muon = {names[id(p)] for p in muon if "jtp_fetch" in names[id(p)]}
    assert fetch_muon == {"model.jtp_fetch.qkv.weight", "model.jtp_fetch.proj.weight"}
    assert "model.jtp_fetch.offsets" in {names[id(p)] for p in adamw}


@pytest.mark.parametrize("objective", ["nextlat", "mtp", "jtp"])
def test_memory_counts_muon_state_on_exactly_the_split_matrices(parallel_tp1, objective):
    """The estimate's Muon share is the split's: one fp32 momentum on those, two elsewhere."""
    from nextlat_pt.flops import muon_matrix_parameters
    from nextlat_pt.memory import estimate_memory

    model = _model(f"nextlat.objective={objective}", "nextlat.mtp_heads=3")
    muon, adamw = split_parameters(model)
    spec = model.model.spec
    assert sum(p.numel() for p in muon) == muon_matrix_parameters(spec)
    estimate = estimate_memory(spec, 16, 1, dp=1, zero_stage=1, optimizer="muon")
    # one fp32 rank: no DeepSpeed copy
    assert estimate.optimizer == pytest.approx(4 * sum(p.numel() for p in muon)
                                               + 8 * sum(p.numel() for p in adamw))


def _matrices(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen))
            for shape in [(24, 16), (16, 40), (8, 8)]]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen) for p in params]


def _muon(params, adjust: str, **kw) -> MuonAdamW:
    kw = {"lr": 0.02, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8,
          "momentum": 0.95, "nesterov": True, "ns_steps": 5, "adjust_lr_fn": adjust,
          "fused": None, **kw}
    return MuonAdamW([{"params": params, "muon": True}], **kw)


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_the_step_is_torch_muon_bit_for_bit(adjust, nesterov):
    ours, theirs = _matrices(0), _matrices(0)
    opt = _muon(ours, adjust, nesterov=nesterov)
    ref = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, momentum=0.95,
                           nesterov=nesterov, ns_steps=5, adjust_lr_fn=adjust)
    for step in range(3):
        for p, q, g in zip(ours, theirs, _grads(ours, step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])


def _reference_step(w: torch.Tensor, g: torch.Tensor, lr: float, decay: float,
                    momentum: float) -> torch.Tensor:
    """One Muon step from zero momentum in float64, written from Keller Jordan's
    description and Liu et al.'s scaling: Nesterov blend, the quintic Newton-Schulz
    iteration on the Frobenius-normalised update (the wide orientation), decoupled weight
    decay, then the step 0.2·√max(A, B)·lr."""
    w, g = w.double(), g.double()
    buf = (1 - momentum) * g
    update = g + momentum * (buf - g)
    a, b, c = NS_COEFFICIENTS
    x = update.T if update.shape[0] > update.shape[1] else update
    x = x / x.norm()
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    ortho = x.T if update.shape[0] > update.shape[1] else x
    scale = 0.2 * max(w.shape) ** 0.5
    return w * (1 - lr * decay) - lr * scale * ortho


def test_one_step_matches_a_float64_reference():
    params = _matrices(1)
    before = [p.detach().clone() for p in params]
    grads = _grads(params, 0)
    opt = _muon(params, "match_rms_adamw")
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, w, g in zip(params, before, grads):
        expected = _reference_step(w, g, lr=0.02, decay=0.1, momentum=0.95)
        moved, expected_move = (p.double() - w.double()), (expected - w.double())
        # torch runs the iteration in bf16: about 1% of the update, far below the 20-40% a
        # wrong scaling rule or a missing transpose would make.
        error = (moved - expected_move).norm() / expected_move.norm()
        assert error < 0.03, (tuple(p.shape), float(error))


def test_muon_lr_scales_the_muon_group_on_the_schedule(parallel_tp1):
    model = _model()
    cfg = load_config(None, ["train.optimizer=muon", "train.lr=1e-3", "train.muon_lr=0.02"]).train
    opt = build_optimizer(model, cfg)
    set_lr(SimpleNamespace(optimizer=opt), 5e-4)  # half the peak, on the way
    muon = [g for g in opt.param_groups if g["muon"]]
    others = [g for g in opt.param_groups if not g["muon"]]
    assert len(muon) == 1 and muon[0]["lr"] == pytest.approx(0.01)
    assert others and all(g["lr"] == 5e-4 for g in others)
    assert {g["weight_decay"] for g in others} == {0.1, 0.0}  # no decay on 1-D parameters
    # torch's AdamW steps the other groups (same group dicts, one state).
    assert opt.adamw.param_groups == others and opt.adamw.state is opt.state


REFUSED = {
    "zero3": (["parallel.zero_stage=3"], 2, "parallel.zero_stage=3"),
    "tp2": (["parallel.tp=2"], 2, "parallel.tp=2"),
    "momentum": (["train.muon_momentum=1.0"], 1, "train.muon_momentum must lie in [0, 1)"),
    "ns_steps": (["train.muon_ns_steps=0"], 1, "train.muon_ns_steps must be at least 1"),
    "muon_lr": (["train.muon_lr=-1"], 1, "train.muon_lr must be >= 0"),
    "adjust": (["train.muon_adjust_lr=spectral"], 1, "match_rms_adamw, original"),
}


@pytest.mark.parametrize("overrides,world,needle", list(REFUSED.values()), ids=list(REFUSED))
def test_the_config_refuses_what_muon_cannot_do_in_one_line(overrides, world, needle):
    cfg = load_config(None, ["train.optimizer=muon", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=world)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_config_accepts_muon_on_zero1_and_zero2():
    for stage in (1, 2):
        validate(load_config(None, ["train.optimizer=muon", f"parallel.zero_stage={stage}",
                                    "train.micro_batch_size=4"]),
                 world_size=2)


def test_muon_with_bf16_weights_refuses_fp32_gradient_accumulation():
    """Muon binds to DeepSpeed's ZeRO optimizer; fp32 accumulation would swap in DeepSpeed's
    bf16 optimizer under ZeRO-1: refused in one line, and `auto` resolves to bf16."""
    cfg = load_config(None, ["train.optimizer=muon", "precision.dtype=bf16",
                             "precision.grad_accum_dtype=fp32"])
    with pytest.raises(ConfigError, match="precision.grad_accum_dtype=bf16"):
        validate(cfg, world_size=1)
    auto = load_config(None, ["train.optimizer=muon", "precision.dtype=bf16"])
    validate(auto, world_size=1)
    assert resolved_grad_accum_dtype(auto) == "bf16"
    assert resolved_grad_accum_dtype(load_config(None, [])) == "fp32"
