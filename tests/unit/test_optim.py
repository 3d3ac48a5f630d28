"""Learning-rate schedules (warmup + cosine / WSD / constant) and the weight-decay split."""

from __future__ import annotations

import pytest
import torch

from nextlat_pt.config import TrainConfig
from nextlat_pt.train.optim import build_optimizer, lr_at, param_groups


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    base.update(kw)
    return TrainConfig(**base)


def test_linear_warmup_reaches_peak():
    cfg = _cfg(lr_schedule="cosine")
    assert lr_at(1, cfg) == pytest.approx(1e-4)
    assert lr_at(5, cfg) == pytest.approx(5e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)


def test_cosine_decays_to_min_lr_at_the_last_step():
    cfg = _cfg(lr_schedule="cosine")
    assert lr_at(55, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    values = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_is_flat_then_decays_linearly():
    cfg = _cfg(lr_schedule="wsd", decay_steps=20)
    assert lr_at(11, cfg) == lr_at(80, cfg) == pytest.approx(1e-3)
    assert lr_at(90, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(100, cfg) == pytest.approx(1e-4)


def test_constant_after_warmup():
    cfg = _cfg(lr_schedule="constant")
    assert lr_at(11, cfg) == lr_at(100, cfg) == pytest.approx(1e-3)


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3  # linear bias, norm weight, norm bias


@pytest.mark.parametrize("name,kind", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizer_choice(name, kind):
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, _cfg(optimizer=name, beta1=0.8, beta2=0.9))
    assert isinstance(opt, kind)
    if name == "adamw":
        assert opt.param_groups[0]["betas"] == (0.8, 0.9)
