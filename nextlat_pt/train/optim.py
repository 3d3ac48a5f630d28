"""AdamW (or Muon with AdamW) with the usual decay split, and the learning-rate schedule as a
pure function of step."""

from __future__ import annotations

import math

import torch

from nextlat_pt.config import TrainConfig
from nextlat_pt.train.muon import MuonAdamW, split_parameters


def param_groups(model: torch.nn.Module | list[torch.nn.Parameter],
                 weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms, biases and other 1-D parameters get none."""
    decay, no_decay = [], []
    params = model.parameters() if isinstance(model, torch.nn.Module) else model
    for param in params:
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's single-kernel AdamW (`fused=True`) takes these parameters."""
    return bool(params) and all(
        p.device.type in FUSED_ADAMW_DEVICES and p.dtype.is_floating_point for p in params)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """torch AdamW (or plain SGD) over the model's local (possibly TP-sharded) parameters.

    AdamW runs torch's fused kernel wherever it exists (CPU and CUDA): one pass over each
    parameter, its gradient and both moments, instead of the default per-tensor path's seven
    elementwise operations (docs/results/cpu_step.md has the measured gain). Its update is
    the same to the bit whether the parameters are separate tensors (the local engine) or
    one flat ZeRO partition (DeepSpeed), so both engines still agree exactly
    (tests/unit/test_local_engine.py).
    """
    if cfg.optimizer == "muon":
        return build_muon(model, cfg)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    params = [p for group in groups for p in group["params"]]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.adam_eps,
        fused=fused_adamw_supported(params) or None,
    )


def build_muon(model: torch.nn.Module, cfg: TrainConfig) -> MuonAdamW:
    """Muon over the hidden matrices (one group, decayed), AdamW over the rest (decay on the
    embeddings and the LM head, none on 1-D parameters); nextlat_pt/train/muon.py."""
    matrices, others = split_parameters(model)
    groups = [{"params": matrices, "muon": True, "weight_decay": cfg.weight_decay,
               "lr_scale": (cfg.muon_lr / cfg.lr) if cfg.muon_lr else 1.0}]
    groups += param_groups(others, cfg.weight_decay)
    groups = [group for group in groups if group["params"]]
    adamw_params = [p for group in groups if not group.get("muon") for p in group["params"]]
    return MuonAdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                     momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov,
                     ns_steps=cfg.muon_ns_steps, adjust_lr_fn=cfg.muon_adjust_lr,
                     fused=fused_adamw_supported(adamw_params) or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then the schedule.

    cosine: from lr to min_lr over the remaining steps. wsd (warmup-stable-decay, the paper's
    1.3B schedule): lr until the last `decay_steps`, then linear to min_lr at max_steps.
    constant: lr.
    """
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "wsd":
        decay_start = cfg.max_steps - cfg.decay_steps
        if step <= decay_start:
            return cfg.lr
        progress = min((step - decay_start) / cfg.decay_steps, 1.0)
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    # cosine from lr (end of warmup) to min_lr (last step)
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


