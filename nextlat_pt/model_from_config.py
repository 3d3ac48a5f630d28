"""The model a config describes: `ModelSpec` and the dtype its weights are kept in.

Shared by training (train/build.py), evaluation and the Hugging Face import, which builds
the model without any of the training machinery.
"""

from __future__ import annotations

import dataclasses

import torch

from nextlat_pt.config import Config
from nextlat_pt.model.gpt import ModelSpec


def compute_dtype(cfg: Config) -> torch.dtype:
    """bf16 (fp32 master weights in the optimizer) where asked or, for `auto`, on GPUs that
    have it; fp32 otherwise (the CPU default)."""
    if cfg.precision.dtype == "bf16":
        return torch.bfloat16
    if cfg.precision.dtype == "auto" and torch.cuda.is_available() \
            and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def model_spec(cfg: Config, vocab_size: int) -> ModelSpec:
    """The config's model shape (`Config.model_shape`) and how to build and run it."""
    m, p = cfg.model, cfg.parallel
    return ModelSpec(
        **dataclasses.asdict(cfg.model_shape(vocab_size)),
        init_std=m.init_std,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        attention_backend=m.attention_backend,
        make_vocab_size_divisible_by=m.make_vocab_size_divisible_by,
        psi_zero_init=cfg.nextlat.psi_zero_init,
        tp=p.tp,
        pp=p.pp,
        vpp=p.vpp or None,
        sequence_parallel=p.sp,
        recompute=cfg.train.recompute_activations,
        params_dtype=compute_dtype(cfg),
        init_seed=cfg.run.seed,
    )
